"""Check exported ONNX graphs against what TensorRT documents it accepts (issue 11).

    python -m export.conformance artifacts/onnx/detector.onnx artifacts/onnx/keypoint_head.onnx
    from export.conformance import check_graphs; findings = check_graphs([path, ...])

The rules are read from TensorRT's own files, never copied into this repository (third_party_root()):

* the ONNX parser's support matrix ``onnx-tensorrt/operators.md`` (parsed): every node's op must be
  supported, every typed input / output must be one of the op's listed types, the opset must be in the
  documented range, and the per-op restrictions that apply to our graphs hold (``X`` must be an
  initializer / a constant tensor, pooling dilations, MaxPool's Indices output, Resize's modes);
* limits the C++ headers document (``tensorrt/<version>/include/NvInfer.h``, every version present):
  ITopKLayer's K ("Currently only values of K up to 3840 are supported"), IResizeLayer's
  InterpolationMode enum, INormalizationLayer's group rule ("It is an error to set nbGroups to a value
  that does not evenly divide into the number of channels");
* the plugin node (custom domain): op type, ``plugin_namespace`` / ``plugin_version`` and every
  attribute against the fields the creator in plugins/src/mlra_plugin.cpp declares, with matching types.

A finding names the graph, the node, the rule and where the rule is written (file:line). The check
runs in build_engines (after export) and in CI (tests/export/test_conformance.py).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

THIRD_PARTY_ENV = "MASKFACE_THIRD_PARTY"
REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = REPO_ROOT / "plugins" / "src" / "mlra_plugin.cpp"

# ONNX TensorProto element type -> the type names of operators.md.
_MATRIX_TYPE = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
                16: "BF16"}


class ThirdPartyMissing(FileNotFoundError):
    """The TensorRT reference files (headers, operators.md) are not where they should be."""


def third_party_root() -> Path:
    """$MASKFACE_THIRD_PARTY, else ../shared/third_party beside the repository (CI's layout)."""
    env = os.environ.get(THIRD_PARTY_ENV)
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "third_party"
    if not (root / "onnx-tensorrt" / "operators.md").is_file():
        raise ThirdPartyMissing(
            f"TensorRT reference files not found in {root} (need onnx-tensorrt/operators.md and "
            f"tensorrt/<version>/include): set ${THIRD_PARTY_ENV} to the shared/third_party folder")
    return root


def tensorrt_header_dirs(root: Path | None = None) -> dict[str, Path]:
    """{"10.16": .../tensorrt/10.16/include, ...}: every header set present."""
    root = root or third_party_root()
    return {p.parent.name: p for p in sorted((root / "tensorrt").glob("*/include")) if (p / "NvInfer.h").is_file()}


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """Where a rule is written: file (relative to the third-party root) and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class OpSupport:
    supported: bool
    types: frozenset[str]
    restrictions: str
    source: Source


@dataclass(frozen=True)
class OperatorMatrix:
    ops: dict[str, OpSupport]
    min_opset: int
    max_opset: int
    opset_source: Source


def parse_operator_matrix(path: Path) -> OperatorMatrix:
    """The table of operators.md: | Operator | Supported | Supported Types | Restrictions |."""
    lines = path.read_text().splitlines()
    rel = f"{path.parent.name}/{path.name}"
    ops: dict[str, OpSupport] = {}
    opset = None
    for number, line in enumerate(lines, 1):
        m = re.search(r"inclusive range of opset (\d+) to opset (\d+)", line)
        if m and opset is None:
            opset = (int(m.group(1)), int(m.group(2)), Source(rel, number))
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("Operator", "") or set(cells[0]) <= {"-"}:
            continue
        types = frozenset(t.strip() for t in (cells[2] if len(cells) > 2 else "").replace(" BOOL", ", BOOL").split(",")
                          if t.strip())
        ops[cells[0]] = OpSupport(cells[1] == "Y", types, cells[3] if len(cells) > 3 else "", Source(rel, number))
    if not ops or opset is None:
        raise ValueError(f"{path}: no operator table / opset range found (format changed?)")
    return OperatorMatrix(ops, opset[0], opset[1], opset[2])


@dataclass(frozen=True)
class HeaderLimits:
    """Limits one TensorRT version's NvInfer.h documents."""

    version: str
    topk_max_k: int
    topk_source: Source
    interpolation_modes: frozenset[str]  # InterpolationMode enumerators, e.g. {"NEAREST", "LINEAR", "CUBIC"}
    interpolation_source: Source
    groups_source: Source  # INormalizationLayer::setNbGroups: nbGroups must divide the channels


def _find(lines: list[str], pattern: str, what: str, path: Path) -> tuple[int, re.Match]:
    for number, line in enumerate(lines, 1):
        m = re.search(pattern, line)
        if m:
            return number, m
    raise ValueError(f"{path}: {what} not documented (pattern {pattern!r}); the header format changed?")


def parse_header_limits(include: Path) -> HeaderLimits:
    path = include / "NvInfer.h"
    lines = path.read_text().splitlines()
    rel = f"tensorrt/{include.parent.name}/include/NvInfer.h"
    # ITopKLayer::setK and INetworkDefinition::addTopK: "Currently only values of K up to 3840 are supported."
    line_k, m = _find(lines, r"Currently only values of K up to (\d+) are supported", "TopK K limit", path)
    line_i, _ = _find(lines, r"^enum class InterpolationMode\b", "InterpolationMode", path)
    modes = set()
    for line in lines[line_i:line_i + 12]:
        e = re.match(r"\s*k([A-Z_]+)\s*=", line)
        if e:
            modes.add(e.group(1))
        if line.strip().startswith("};"):
            break
    line_g, _ = _find(lines, r"error to set \\p nbGroups to a value that does not evenly divide", "nbGroups rule", path)
    return HeaderLimits(include.parent.name, int(m.group(1)), Source(rel, line_k), frozenset(modes),
                        Source(rel, line_i), Source(rel, line_g))


@dataclass(frozen=True)
class PluginFields:
    name: str
    version: str
    namespace: str
    fields: dict[str, str]  # field name -> PluginFieldType enumerator (kINT32, kFLOAT32, ...)
    source: Source


def parse_plugin_fields(path: Path = PLUGIN_SOURCE) -> PluginFields:
    """The creator's name / version / namespace and field declarations of plugins/src/mlra_plugin.cpp."""
    text = path.read_text()
    fields: dict[str, str] = {}
    first = None
    for number, line in enumerate(text.splitlines(), 1):
        m = re.search(r'mFields\.emplace_back\("(\w+)",\s*[^,]+,\s*PluginFieldType::(k\w+)', line)
        if m:
            fields.setdefault(m.group(1), m.group(2))
            first = first or number

    def constant(name: str) -> str:
        m = re.search(rf'{name}\s*(?:\[\])?\s*(?:\{{|=)\s*"([^"]*)"', text)
        if not m:
            raise ValueError(f"{path}: constant {name} not found")
        return m.group(1)

    if not fields:
        raise ValueError(f"{path}: no plugin field declarations found")
    return PluginFields(constant("kPluginName"), constant("kPluginVersion"), constant("kPluginNamespace"),
                        fields, Source(str(path.relative_to(REPO_ROOT)), first))


# --------------------------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    graph: str
    node: str
    op: str
    rule: str
    message: str
    source: str

    def __str__(self) -> str:
        return f"{self.graph}: node {self.node!r} ({self.op}): [{self.rule}] {self.message} (documented at {self.source})"


class ConformanceError(ValueError):
    """At least one node breaks a documented TensorRT rule; ``findings`` lists them."""

    def __init__(self, findings: list[Finding]):
        self.findings = list(findings)
        super().__init__(f"{len(findings)} TensorRT conformance finding(s):\n" + "\n".join(f"  {f}" for f in findings))


@dataclass
class _Graph:
    name: str
    model: object
    types: dict[str, int]
    shapes: dict[str, list]
    constants: dict[str, object]  # tensor name -> numpy value (initializers and Constant outputs)


def _load(path: Path) -> _Graph:
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    types, shapes = {}, {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = info.type.tensor_type
        if t.elem_type:
            types[info.name] = t.elem_type
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    constants = {}
    for init in model.graph.initializer:
        types[init.name] = init.data_type
        constants[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
                    types[node.output[0]] = attr.t.data_type
    return _Graph(Path(path).name, model, types, shapes, constants)


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Checker:
    """Holds the parsed rules; ``check(path)`` returns the findings of one graph."""

    def __init__(self, root: Path | None = None, plugin_source: Path = PLUGIN_SOURCE):
        self.root = root or third_party_root()
        self.matrix = parse_operator_matrix(self.root / "onnx-tensorrt" / "operators.md")
        headers = tensorrt_header_dirs(self.root)
        if not headers:
            raise ThirdPartyMissing(f"no tensorrt/<version>/include/NvInfer.h under {self.root}")
        self.limits = [parse_header_limits(p) for p in headers.values()]
        self.plugin = parse_plugin_fields(plugin_source)

    # ------------------------------------------------------------------ graph
    def check(self, path: str | os.PathLike) -> list[Finding]:
        graph = _load(Path(path))
        findings: list[Finding] = []
        for imp in graph.model.opset_import:
            if imp.domain in ("", "ai.onnx") and not self.matrix.min_opset <= imp.version <= self.matrix.max_opset:
                findings.append(Finding(graph.name, "<graph>", "opset", "opset-range",
                                        f"default-domain opset {imp.version} is outside {self.matrix.min_opset}.."
                                        f"{self.matrix.max_opset}", str(self.matrix.opset_source)))
        for index, node in enumerate(graph.model.graph.node):
            name = node.name or f"#{index}"

            def add(rule, message, source, node=node, name=name):
                findings.append(Finding(graph.name, name, node.op_type, rule, message, str(source)))

            if node.domain not in ("", "ai.onnx"):
                self._check_plugin(graph, node, add)
                continue
            support = self.matrix.ops.get(node.op_type)
            if support is None or not support.supported:
                add("op-supported", f"{node.op_type} is {'not listed' if support is None else 'marked N'} in the "
                    "ONNX parser's support matrix", support.source if support else "onnx-tensorrt/operators.md")
                continue
            self._check_types(graph, node, support, add)
            self._check_restrictions(graph, node, support, add)
            handler = getattr(self, f"_check_{node.op_type}", None)
            if handler is not None:
                handler(graph, node, support, add)
        return findings

    def _check_types(self, graph, node, support, add):
        """The matrix's types are those of the op's data: the type constraint of its first input (ONNX's
        "T"), applied to every input and output bound to that constraint. Index / shape / condition
        tensors (TopK's K and indices, Resize's sizes, a comparison's BOOL output) have other constraints
        and are not the data type. ConstantOfShape's data is its output (its input is the shape)."""
        import onnx

        if node.op_type in ("Constant", "Shape", "Identity"):
            return  # no computation on data (Shape reads only the shape; Identity is removed by the parser)
        schema = onnx.defs.get_schema(node.op_type, self.matrix.max_opset)
        params = [i.type_str for i in schema.inputs] + [o.type_str for o in schema.outputs]
        names = list(node.input) + list(node.output)
        formal = list(schema.inputs) + list(schema.outputs)
        data_param = schema.outputs[0].type_str if node.op_type == "ConstantOfShape" else schema.inputs[0].type_str
        bound = []
        for position, tensor in enumerate(names):
            if position < len(node.input):
                index = min(position, len(schema.inputs) - 1)  # variadic inputs repeat the last formal one
                param = formal[index].type_str
            else:
                index = len(schema.inputs) + min(position - len(node.input), len(schema.outputs) - 1)
                param = params[index]
            if tensor and param == data_param:
                bound.append(tensor)
        wrong = []
        for tensor in bound:
            elem = graph.types.get(tensor)
            kind = _MATRIX_TYPE.get(elem, f"elem_type {elem}") if elem is not None else None
            if kind is not None and kind not in support.types:
                wrong.append(f"{tensor!r} is {kind}")
        if wrong:
            add("type", f"{', '.join(wrong)}; the parser supports {node.op_type} on {', '.join(sorted(support.types))}",
                support.source)

    def _check_restrictions(self, graph, node, support, add):
        import onnx

        text = support.restrictions
        for m in re.finditer(r"`(\w+)` must be (?:an initializer|a constant tensor|a build-time constant)", text):
            wanted = m.group(1)
            schema = onnx.defs.get_schema(node.op_type, max(self.matrix.max_opset, 1))
            names = [i.name for i in schema.inputs]
            if wanted in names:
                position = names.index(wanted)
                if position < len(node.input) and node.input[position] and node.input[position] not in graph.constants:
                    add("constant-input", f"input {wanted!r} ({node.input[position]!r}) must be an initializer or "
                        "a Constant", support.source)
            elif wanted in _attrs(node) or wanted in ("axis",):
                continue  # an attribute is constant by construction
        if "`dilations` must be empty or all ones" in text:
            dilations = _attrs(node).get("dilations")
            if dilations and any(d != 1 for d in dilations):
                add("dilations", f"dilations {list(dilations)} must be empty or all ones", support.source)
        if "2D or 3D" in text:
            kernel = _attrs(node).get("kernel_shape", [])
            if len(kernel) not in (2, 3):
                add("pool-rank", f"kernel_shape {list(kernel)} is not 2D or 3D", support.source)
        if "`Indices` output tensor unsupported" in text and len(node.output) > 1 and node.output[1]:
            add("maxpool-indices", "MaxPool's Indices output is unsupported", support.source)

    # ------------------------------------------------------------------ op-specific (header limits)
    def _check_TopK(self, graph, node, support, add):
        k = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
        for limits in self.limits:
            if k is None:
                add("topk-k-constant", f"K ({node.input[1]!r}) is not a constant; TensorRT {limits.version} needs K "
                    f"<= {limits.topk_max_k} known at build time", limits.topk_source)
                continue
            value = int(k.reshape(-1)[0])
            if not 1 <= value <= limits.topk_max_k:
                add("topk-k-limit", f"K = {value} exceeds TensorRT {limits.version}'s limit: \"Currently only values "
                    f"of K up to {limits.topk_max_k} are supported\"", limits.topk_source)

    def _check_Resize(self, graph, node, support, add):
        attrs = {k: _text(v) for k, v in _attrs(node).items()}
        text = support.restrictions

        def allowed(label: str) -> set[str]:
            m = re.search(rf"{label}:([^.<]*)", text)
            return set(re.findall(r"`(\w+)`", m.group(1))) if m else set()

        checks = (("coordinate_transformation_mode", "half_pixel", "Supported resize transformation modes"),
                  ("mode", "nearest", "Supported resize modes"), ("nearest_mode", "round_prefer_floor",
                                                                 "Supported nearest modes"),
                  ("keep_aspect_ratio_policy", "stretch", "Supported aspect ratio policy"))
        for attr, default, label in checks:
            value, ok = attrs.get(attr, default), allowed(label)
            if ok and value not in ok:
                add("resize-mode", f"{attr}={value!r} is not one of {sorted(ok)}", support.source)
        if "Antialiasing is not supported" in text and int(attrs.get("antialias", "0")):
            add("resize-antialias", "antialias=1 is not supported", support.source)
        mode = attrs.get("mode", "nearest").upper()
        for limits in self.limits:
            if mode not in limits.interpolation_modes:
                add("resize-interpolation", f"mode {mode.lower()!r} has no InterpolationMode in TensorRT "
                    f"{limits.version} ({sorted(limits.interpolation_modes)})", limits.interpolation_source)

    def _check_norm_groups(self, graph, node, add, groups: int | None):
        channels = (graph.shapes.get(node.input[0]) or [None, None])[1:2]
        channels = channels[0] if channels else None
        if groups is None or channels is None:
            return
        if groups < 1 or channels % groups:
            for limits in self.limits:
                add("norm-groups", f"{groups} groups do not evenly divide {channels} channels", limits.groups_source)

    def _check_InstanceNormalization(self, graph, node, support, add):
        # One group per channel: scale / bias must be constants with one value per channel of the input.
        scale = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            add("constant-input", "scale must be an initializer or a Constant", support.source)
            return
        channels = (graph.shapes.get(node.input[0]) or [None, None])[1]
        if channels is not None and scale.size != channels:
            add("norm-groups", f"scale has {scale.size} values for {channels} channels", self.limits[0].groups_source)

    def _check_GroupNormalization(self, graph, node, support, add):
        self._check_norm_groups(graph, node, add, _attrs(node).get("num_groups"))

    # ------------------------------------------------------------------ plugin node
    def _check_plugin(self, graph, node, add):
        p = self.plugin
        if node.op_type != p.name:
            add("plugin-op", f"custom op {node.domain}::{node.op_type} has no plugin in plugins/ (only {p.name})",
                p.source)
            return
        attrs = _attrs(node)
        for key, want in (("plugin_namespace", p.namespace), ("plugin_version", p.version)):
            got = _text(attrs.get(key, b""))
            if got != want:
                add("plugin-" + key, f"{key}={got!r}; the creator registers {want!r}", p.source)
        wanted_type = {"INT": "kINT32", "INTS": "kINT32", "FLOAT": "kFLOAT32", "FLOATS": "kFLOAT32"}
        import onnx

        for attr in node.attribute:
            if attr.name in ("plugin_namespace", "plugin_version"):
                continue
            kind = onnx.AttributeProto.AttributeType.Name(attr.type)
            if attr.name not in p.fields:
                add("plugin-field", f"attribute {attr.name!r} is not a field of the creator ({sorted(p.fields)})",
                    p.source)
            elif wanted_type.get(kind) != p.fields[attr.name]:
                add("plugin-field-type", f"attribute {attr.name!r} is {kind}, the creator declares "
                    f"{p.fields[attr.name]}", p.source)
        levels = int(attrs.get("max_level", 6)) - int(attrs.get("min_level", 2)) + 1
        scales = attrs.get("spatial_scales")
        if scales is not None and len(scales) != levels:
            add("plugin-levels", f"{len(scales)} spatial_scales for {levels} levels", p.source)
        if len(node.input) != levels + 1:
            add("plugin-inputs", f"{len(node.input)} inputs; the plugin takes {levels} maps + rois", p.source)


# --------------------------------------------------------------------------------------------- Python API


_CHAIN_START = re.compile(r'py::(class_|enum_)<([^;]*?)>\(\s*(\w+)\s*,\s*"(\w+)"')
_NAMED_BINDING = re.compile(r'py::class_<([^;]*?)>\s+(\w+)\s*\{\s*m\s*,\s*"(\w+)"')
_MEMBER = re.compile(r'\.(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|value)\(\s*"(\w+)"')
_MODULE_MEMBER = re.compile(r'\bm\.(?:def|attr)\(\s*"(\w+)"')


def _chain(text: str, start: int) -> str:
    """The pybind11 statement from `start` to its ';' at parenthesis depth 0 (strings skipped)."""
    depth, i, quote = 0, start, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == ";" and depth == 0:
            return text[start:i]
        i += 1
    return text[start:]


@lru_cache(maxsize=4)
def python_api(version: str, root: str | None = None) -> dict[str, frozenset[str]]:
    """{python class or enum name: its attribute / method / enum member names} of the ``tensorrt``
    module of one TensorRT version, read from its pybind11 sources (tensorrt/<version>/python/src);
    module-level functions and attributes are under "" (``tensorrt.get_plugin_registry``, ``float32``)."""
    base = (Path(root) if root else third_party_root()) / "tensorrt" / version / "python" / "src"
    if not base.is_dir():
        raise ThirdPartyMissing(f"no pybind11 sources for TensorRT {version} in {base}")
    api: dict[str, set[str]] = {"": set()}
    cpp_name: dict[str, str] = {}  # C++ type -> Python class
    bases: dict[str, list[str]] = {}  # Python class -> C++ types after the first template argument
    for source in sorted(base.rglob("*.cpp")):
        text = source.read_text(errors="replace")
        scopes = {"m": ""}
        for m in _NAMED_BINDING.finditer(text):  # py::class_<ILogger, PyLogger> binding{m, "ILogger"}; binding.def(...)
            types_, var, name = [t.strip() for t in m.group(1).split(",")], m.group(2), m.group(3)
            scopes[var] = name
            api[""].add(name)
            cpp_name[types_[0]] = name
            bases[name] = types_[1:]
            members = api.setdefault(name, set())
            for use in re.finditer(rf"\b{var}\s*\.", text):
                members.update(_MEMBER.findall(_chain(text, use.start() + len(var))))
        for m in _CHAIN_START.finditer(text):
            types_, scope, name = [t.strip() for t in m.group(2).split(",")], m.group(3), m.group(4)
            chain = _chain(text, m.start())
            members = _MEMBER.findall(chain)
            api.setdefault(name, set()).update(members)
            if m.group(1) == "class_":
                cpp_name[types_[0]] = name
                bases[name] = types_[1:]
            if scope == "m":
                api[""].add(name)
            elif scope in scopes:  # a nested enum: trt.ILogger.Severity, and with export_values() trt.ILogger.WARNING
                api.setdefault(scopes[scope], set()).add(name)
                if ".export_values()" in chain:
                    api[scopes[scope]].update(members)
        api[""].update(_MODULE_MEMBER.findall(text))
    for _ in range(4):  # inherited members (Logger from ILogger, ...), a few levels deep
        for name, cpp_bases in bases.items():
            for b in cpp_bases:
                if b in cpp_name and cpp_name[b] in api:
                    api[name] = api.setdefault(name, set()) | api[cpp_name[b]]
    return {k: frozenset(v) for k, v in api.items()}


def missing_python_api(uses, version: str, root: str | None = None) -> list[str]:
    """The uses [(class, attribute)] ('' = the module) that TensorRT `version`'s Python API lacks.
    Dunder names (``__version__``, ``__name__``) are the module's own and are not checked."""
    api = python_api(version, root)
    out = []
    for cls, attr in sorted(set(uses)):
        if attr.startswith("__"):
            continue
        if cls not in api:
            out.append(f"tensorrt {version}: no class {cls!r} (for .{attr})")
        elif attr not in api[cls]:
            out.append(f"tensorrt {version}: {cls or 'the module'} has no attribute {attr!r}")
    return out


@lru_cache(maxsize=4)
def _checker(root: str | None) -> Checker:
    return Checker(Path(root) if root else None)


def check_graphs(paths, root: str | os.PathLike | None = None) -> list[Finding]:
    """All findings of the given graphs (empty: TensorRT documents nothing they break)."""
    checker = _checker(str(root) if root else None)
    return [f for p in paths for f in checker.check(p)]


def require_conformance(paths, root: str | os.PathLike | None = None) -> None:
    """Raise ConformanceError listing every finding."""
    findings = check_graphs(paths, root)
    if findings:
        raise ConformanceError(findings)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("graphs", nargs="+", help="ONNX graphs that TensorRT will build (detector.onnx, keypoint_head.onnx)")
    p.add_argument("--third-party", help=f"the shared/third_party folder (default ${THIRD_PARTY_ENV} or ../shared/third_party)")
    args = p.parse_args(argv)
    findings = check_graphs(args.graphs, args.third_party)
    for f in findings:
        print(f)
    print(f"conformance: {len(args.graphs)} graph(s), {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
