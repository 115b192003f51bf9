"""Post-training int8 quantisation of an exported model.onnx, calibrated on real images.

    images = calibration_images(cfg, ["photos/", "list.txt"], size=64)   # eval transform + normalisation
    quantize_export(model_dir, images)     # writes export_files.INT8_FILES beside model.onnx

Two int8 models are written from the same fp32 model.onnx and the same calibration images:
- ONNX Runtime: static QDQ quantisation (onnxruntime.quantization.quantize_static), activations uint8
  (asymmetric, per tensor), weights int8 (symmetric, per output channel), reduce_range on CPUs without VNNI
  (7-bit weights: AVX2's u8 x s8 multiply-add saturates in int16 otherwise).
- OpenVINO: NNCF's post-training quantisation (nncf.quantize, ModelType.TRANSFORMER preset) of the OpenVINO
  model read from model.onnx, saved as model_int8.xml / .bin.

What is int8 and what stays float, in both: only the Linear layers' matrix multiplications (MatMul/Gemm with a
constant weight) are quantised. Left in float: the Performer's random-feature projection (the MatMul whose
result goes into Exp: exp turns an additive quantisation error into a multiplicative one, and the Performer
divides by a sum of such exps), the Exp itself, the sums of its exp features over the tokens (GEMMs with a
ones vector, whose inputs span the exps' whole range), the attention's activation x activation products (q k^T and
attn v, whose ranges change from image to image), softmax, LayerNorm, GELU and the residual additions (cheap,
and error-prone in int8). The agreement with fp32 is measured by tests/test_int8.py and tools/benchmark.py.
"""
import os

import numpy as np

from .backends import open_backend, openvino_core
from .cpu_env import cpu_flags
from .errors import UserError
from .export_files import INT8_MODEL, ONNX_FILE, ORT_INT8_FILE, OV_INT8_FILE
DEFAULT_CALIB_SIZE = 300
LIST_EXTENSIONS = (".txt",)


def calibration_paths(sources, size):
    """Up to `size` image paths, evenly spaced over the images of `sources` (image files, folders searched
    recursively, or .txt lists of image paths, one a line, optionally followed by a label as in Data lists)."""
    from .classify import image_paths

    found = []
    for source in sources:
        if os.path.isfile(source) and source.endswith(LIST_EXTENSIONS):
            base = os.path.dirname(os.path.abspath(source))
            with open(source) as f:
                for line in f:
                    if line.strip():
                        path = line.strip().rsplit(" ", 1)[0] if " " in line.strip() else line.strip()
                        found.append(path if os.path.isabs(path) else os.path.join(base, path))
        elif os.path.exists(source):
            found += list(image_paths([source]))
        else:
            raise UserError(f"--calib {source}: no such file or folder")
    if not found:
        raise UserError(f"--calib {' '.join(sources)}: no images found to calibrate on")
    picked = np.unique(np.linspace(0, len(found) - 1, min(size, len(found))).round().astype(int))
    return [found[i] for i in picked]


def calibration_images(cfg, sources, size=DEFAULT_CALIB_SIZE):
    """[N, 3, S, S] float32: the calibration images through the config's eval transform (resize, centre
    crop, Data.mean / Data.std normalisation), as tools/predict.py feeds the exported model."""
    from .transforms import build_transform

    transform = build_transform(cfg, "val")
    images = []
    for path in calibration_paths(sources, size):
        try:
            images.append(transform(path))
        except OSError as e:
            raise UserError(f"--calib: cannot read image {path}: {e}")
    return np.stack(images).astype("float32")


def cpu_has_vnni():
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _uniform_constants(graph):
    """Names of the initializers and Constant-node outputs whose elements are all equal: the ones vectors that
    write a sum as a GEMM (the Performer's sums over its tokens), never a Linear weight."""
    from onnx import numpy_helper

    arrays = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arrays[node.output[0]] = node.attribute[0].t
    uniform = set()
    for name, tensor in arrays.items():
        a = numpy_helper.to_array(tensor)
        if a.size > 1 and (a == a.flat[0]).all():
            uniform.add(name)
    return uniform


def float_kept_matmuls(onnx_model):
    """(names of the MatMul/Gemm nodes to quantise, names of those kept in float): a node is quantised when
    one input is a constant weight (a Linear layer) and its output does not go (within two ops) into an Exp
    (the Performer's random-feature projection). A constant of equal elements is a sum written as a GEMM (the
    Performer's sums of its exp features over the tokens), not a weight: quantised, those sums cost 1.2 points
    of top-1 on the 10,000 Fashion-MNIST test images (OpenVINO 88.29% against 89.49%, 95.4% agreement, with an
    earlier run's weights); kept float, 0.01 (89.48%, 99.8%; docs/deployment.md)."""
    graph = onnx_model.graph
    sums = _uniform_constants(graph)
    # A tensor is constant when every input of the node making it is (ONNX lists nodes in topological order):
    # this repo's attention computes its qkv weights at run time from constant parameters (split, scale).
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        if all(name in constants for name in node.input if name):
            constants.update(node.output)
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_exp(tensor, hops=3):
        nodes = consumers.get(tensor, [])
        return any(n.op_type == "Exp" or (hops > 1 and any(feeds_exp(o, hops - 1) for o in n.output))
                   for n in nodes)

    quantised, kept = [], []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weighted = any(name in constants for name in node.input[:2]) and not any(n in sums for n in node.input[:2])
        (quantised if weighted and not feeds_exp(node.output[0]) else kept).append(node.name)
    return quantised, kept


def quantize_onnxruntime(fp32_path, out_path, images):
    """Static QDQ int8 model of fp32_path at out_path, calibrated on `images`, quantising the Linear MatMuls
    (float_kept_matmuls) of the pre-processed graph: its fusions rename nodes (the head's MatMul + Add becomes
    a Gemm), and a name of the unprocessed graph would leave that node float."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.batches = iter([{name: images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    name = onnx.load(fp32_path, load_external_data=False).graph.input[0].name
    prepared = out_path + ".pre.onnx"
    try:
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        nodes, _ = float_kept_matmuls(onnx.load(prepared))
        quantize_static(prepared, out_path, Reader(name), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=not cpu_has_vnni(), nodes_to_quantize=nodes,
                        op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        if os.path.exists(prepared):
            os.remove(prepared)


def read_folded_openvino(fp32_path):
    """The OpenVINO model of fp32_path with its constant subgraphs folded. The attention's q, k and v weights
    are computed in the graph from the qkv parameter (split, scale): unfolded, NNCF sees them as activations
    and leaves those 21 MatMuls float (measured on T2T-ViT-7: 33 of the 54 Linear MatMuls were int8)."""
    from openvino._offline_transformations import apply_moc_transformations

    model = openvino_core().read_model(fp32_path)
    apply_moc_transformations(model, cf=True)
    return model


def quantize_openvino(fp32_path, out_path, images, kept):
    """NNCF int8 model of fp32_path (read by OpenVINO) at out_path (.xml and .bin), transformer preset,
    calibrated on `images`; the ops of the ONNX nodes `kept` and every activation x activation MatMul stay
    float."""
    import nncf
    import openvino as ov

    model = read_folded_openvino(fp32_path)
    # OpenVINO names each op read from ONNX after the ONNX node; folding keeps the names of the ops it keeps.
    names = {op.get_friendly_name() for op in model.get_ops()}
    missing = [n for n in kept if n not in names]
    if missing:  # NNCF would quietly quantise what it cannot find
        raise UserError(f"{fp32_path}: OpenVINO has no op named {missing[0]} to keep in float "
                        f"({len(missing)} of {len(kept)} missing)")
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    quantised = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(images),
                              ignored_scope=nncf.IgnoredScope(names=kept))
    ov.save_model(quantised, out_path, compress_to_fp16=False)


def openvino_matmul_precisions(xml_path):
    """{"int8": n, "float": n, "float, into Exp": n}: the MatMuls of an OpenVINO model by whether both inputs
    are quantised (a FakeQuantize, or an int8 constant, behind at most a few Convert / Multiply / Subtract /
    Reshape / Transpose ops) and, for the float ones, whether they feed an Exp within three ops."""
    import openvino as ov

    def source(node, i):
        return node.input(i).get_source_output().get_node()

    def quantised(node, depth=0):
        kind = node.get_type_name()
        if kind == "FakeQuantize" or (kind == "Constant" and node.get_element_type() in (ov.Type.i8, ov.Type.u8)):
            return True
        return depth < 4 and kind in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose") and any(
            quantised(source(node, i), depth + 1) for i in range(node.get_input_size()))

    def feeds_exp(node, hops=3):
        return any(t.get_node().get_type_name() == "Exp" or (hops > 1 and feeds_exp(t.get_node(), hops - 1))
                   for out in node.outputs() for t in out.get_target_inputs())

    counts = {"int8": 0, "float": 0, "float, into Exp": 0}
    for op in openvino_core().read_model(xml_path).get_ops():
        if op.get_type_name() == "MatMul":
            if all(quantised(source(op, i)) for i in range(2)):
                counts["int8"] += 1
            else:
                counts["float, into Exp" if feeds_exp(op) else "float"] += 1
    return counts


def quantize_export(model_dir, images, backends=("onnxruntime", "openvino")):
    """Write the int8 models of `backends` for model_dir/model.onnx, calibrated on `images`. Returns
    {backend: file written}."""
    import onnx

    fp32 = os.path.join(model_dir, ONNX_FILE)
    if not os.path.isfile(fp32):
        raise UserError(f"int8 is quantised from {ONNX_FILE}: export the onnx format too (--format onnx or all)")
    graph = onnx.load(fp32)
    quantised, kept = float_kept_matmuls(graph)
    if not quantised:
        raise UserError(f"{fp32} has no Linear MatMul to quantise")
    written = {}
    if "onnxruntime" in backends:
        quantize_onnxruntime(fp32, os.path.join(model_dir, ORT_INT8_FILE), images)
        written["onnxruntime"] = ORT_INT8_FILE
    if "openvino" in backends:
        quantize_openvino(fp32, os.path.join(model_dir, OV_INT8_FILE), images, kept)
        written["openvino"] = OV_INT8_FILE
    return written


def int8_agreement(model_dir, images, batch=32):
    """{int8 backend: (max |logit difference|, top-1 agreement)} against ONNX Runtime's fp32 model.onnx on
    `images`."""
    def logits(backend, precision):
        predictor = open_backend(model_dir, backend, precision, threads=None)
        return np.concatenate([predictor(images[i:i + batch]) for i in range(0, len(images), batch)])

    fp32 = logits("onnxruntime", "fp32")
    result = {}
    for backend in INT8_MODEL:
        got = logits(backend, "int8")
        result[backend] = (float(np.abs(got - fp32).max()), float(np.mean(got.argmax(-1) == fp32.argmax(-1))))
    return result


def int8_agreement_line(model_dir, images):
    """One line: each int8 model's top-1 agreement and max |logit difference| with fp32 on `images`."""
    parts = [f"{backend} {100 * agree:.1f}% (max |dlogit| {diff:.3g})"
             for backend, (diff, agree) in int8_agreement(model_dir, images).items()]
    return f"int8 top-1 agreement with fp32 on the {len(images)} calibration images: {', '.join(parts)}"


def onnx_int8_matmuls(path):
    """How many MatMul / Gemm nodes of a QDQ ONNX model take both operands from a DequantizeLinear (run in int8
    by ONNX Runtime)."""
    import onnx

    graph = onnx.load(path).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    return sum(all(made_by.get(name) == "DequantizeLinear" for name in node.input[:2])
               for node in graph.node if node.op_type in ("MatMul", "Gemm"))


def int8_matmuls_line(model_dir):
    """One line: how many MatMuls each int8 model of model_dir runs in int8, and which stay float."""
    counts, parts = None, []
    if os.path.isfile(os.path.join(model_dir, OV_INT8_FILE)):
        counts = openvino_matmul_precisions(os.path.join(model_dir, OV_INT8_FILE))
        parts.append(f"openvino {counts['int8']}")
    if os.path.isfile(os.path.join(model_dir, ORT_INT8_FILE)):
        parts.append(f"onnxruntime {onnx_int8_matmuls(os.path.join(model_dir, ORT_INT8_FILE))}")
    line = f"int8 MatMuls (the Linear layers): {', '.join(parts)}"
    if counts:
        line += (f"; float: {counts['float, into Exp']} into Exp (the Performer's random features), "
                 f"{counts['float']} others (activation x activation products, the Performer's sums)")
    return line
