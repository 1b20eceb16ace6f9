import json

from export.build_engines import main


def test_main_job_on_a_cpu_machine_exports_validates_and_reports_trt_missing(built, capfd):
    out, code = built
    assert code == 0
    for name in ("detector.onnx", "keypoint_head.onnx", "keypoint_head_portable.onnx"):
        assert (out / "onnx" / name).stat().st_size > 100_000
    report = json.loads((out / "parity" / "parity_onnxruntime.json").read_text())
    assert report["passed"] and report["backend"] == "onnxruntime"
    names = [c["name"] for c in report["cases"]]
    assert "astronaut" in names and any(n.startswith("random") for n in names)
    assert all(c["num_rois"] == 37 for c in report["cases"])
    md = (out / "parity" / "parity_onnxruntime.md").read_text()
    assert "| astronaut |" in md and "PASS" in md
    print(f"\nworst ONNX Runtime errors: {report['worst']}")


def test_require_trt_fails_where_tensorrt_is_missing(tmp_path, capsys):
    from export.tensorrt_build import tensorrt_status

    available, reason = tensorrt_status()
    code = main(["--config", "mbv2", "--out", str(tmp_path), "--skip-parity", "--require-trt"])
    printed = capsys.readouterr().out
    if available:
        assert code == 0
    else:
        assert code == 2
        assert "TensorRT not available" in printed and reason in printed
        assert (tmp_path / "onnx" / "detector.onnx").is_file()
    assert "seeded initialisation" in printed


def test_trt_parity_exit_rule_fp16_on_seeded_weights_is_informational_and_marked():
    from export.build_engines import EXIT_PARITY_FAILED, SEEDED_FP16_GATE, trt_parity_exit_code
    from export.parity import to_markdown

    def report(passed):
        return {"backend": "tensorrt_fp16", "model": "r50", "tolerance": {}, "worst": {}, "passed": passed, "cases": []}

    failed = report(False)
    assert trt_parity_exit_code(failed, fp16=True, trained=False) == 0 and failed["gate"] == SEEDED_FP16_GATE
    assert "FAIL" in to_markdown(failed) and "informational (seeded weights" in to_markdown(failed)
    for fp16, trained in ((True, True), (False, False), (False, True)):  # the gate applies
        r = report(False)
        assert trt_parity_exit_code(r, fp16, trained) == EXIT_PARITY_FAILED and r["gate"] == "enforced"
    assert trt_parity_exit_code(report(True), fp16=True, trained=True) == 0
