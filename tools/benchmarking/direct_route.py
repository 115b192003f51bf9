"""The direct route: the official model exported the way a user without this repo would, timed as our rows are.

direct_export, a torch worker run once after prepare: the official T2T-ViT (tools/torch_reference.py, which the
tests prove equal to the official code, or the official code itself from --official-repo, imported at run time)
with the benchmark's weights, in eval mode, exported two ways:
  torch.onnx.export      ONNX, opset 17, any batch size (the TorchScript exporter: the one that needs no
                         onnxscript), run by OpenVINO and by ONNX Runtime
  ov.convert_model       OpenVINO's own conversion of the torch module, saved as IR with its fp32 weights
                         (compress_to_fp16=False) so that the timed process loads no torch
direct, one timed worker per route and precision (fp32; bf16 in OpenVINO where the CPU has it): the file in a
plain session (sessions.py) with the same runtime settings as our rows.
"""
import importlib.util
import os

import numpy as np

from .sessions import plain_session, time_session
from .settings import config_of

# route: (what the table calls it, the runtime that runs it, its file in the work folder's direct/)
ROUTES = {"onnx_openvino": ("torch.onnx->openvino", "openvino", "official.onnx"),
          "onnx_onnxruntime": ("torch.onnx->onnxruntime", "onnxruntime", "official.onnx"),
          "convert_openvino": ("ov.convert_model->openvino", "openvino", "official_convert.xml")}


def direct_dir(work_dir):
    return os.path.join(work_dir, "direct")


def official_model(args):
    """(torch, the official model with the benchmark's weights, in eval mode, where it came from)."""
    import torch
    torch.set_num_threads(args.threads)
    weights = np.load(os.path.join(args.work_dir, "weights_torch_layout.npz"))
    num_classes = config_of(args).Global.num_classes
    if args.official_repo:
        from make_reference import import_official
        _, timm, _ = import_official(args.official_repo)
        model, source = timm.create_model(args.model, img_size=args.img_size, num_classes=num_classes), \
            f"the official code in {args.official_repo}"
    else:
        from torch_reference import create_reference
        model, source = create_reference(args.model, img_size=args.img_size, num_classes=num_classes), \
            "tools/torch_reference.py"
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files}, strict=True)
    return torch, model.eval(), source


def route_precisions(runtime):
    """The precisions the direct route runs in `runtime` on this CPU: fp32, and bf16 where ours does."""
    from t2tvit.backends import precision_problem
    wanted = ("fp32", "bf16") if runtime == "openvino" else ("fp32",)
    return [p for p in wanted if precision_problem(runtime, p) is None]


def export_direct(args):
    """Export the official model both direct ways into the work folder's direct/; {"source", "routes": {route:
    [precisions]}, "unavailable": {route: why}}. A route whose runtime or exporter is missing or fails is
    unavailable, with the reason: a fact about the direct route, not an error of the benchmark."""
    torch, model, source = official_model(args)
    folder = direct_dir(args.work_dir)
    os.makedirs(folder, exist_ok=True)
    example = torch.from_numpy(np.random.RandomState(0).standard_normal(
        (2, 3, args.img_size, args.img_size)).astype("float32"))
    exported, unavailable = {}, {}

    def to_onnx(path):
        torch.onnx.export(model, (example,), path, input_names=["x"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)

    def to_ir(path):
        import openvino as ov
        ov.save_model(ov.convert_model(model, example_input=example), path, compress_to_fp16=False)

    for name, export in (("official.onnx", to_onnx), ("official_convert.xml", to_ir)):
        if export is to_ir and importlib.util.find_spec("openvino") is None:
            exported[name] = "openvino is not installed"
            continue
        try:
            with torch.no_grad():
                export(os.path.join(folder, name))
            exported[name] = None
        except Exception as e:  # the exporter's own failure: reported as the route's, the benchmark goes on
            exported[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    routes = {}
    for route, (_, runtime, name) in ROUTES.items():
        why = exported[name] or (f"{runtime} is not installed" if importlib.util.find_spec(runtime) is None else None)
        if why:
            unavailable[route] = why
        else:
            routes[route] = route_precisions(runtime)
    return {"source": source, "routes": routes, "unavailable": unavailable}


def measure_direct(args):
    """Route --direct-route at --precision, timed and compared as every eval row."""
    _, runtime, name = ROUTES[args.direct_route]
    path = os.path.join(direct_dir(args.work_dir), name)
    return time_session(args, *plain_session(runtime, path, args.precision, args.threads))
