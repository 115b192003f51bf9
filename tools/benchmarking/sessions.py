"""Plain runtime sessions: a model file in OpenVINO or ONNX Runtime called the way the runtime's own documentation
calls it (`compiled(x)`, `session.run`), with the settings t2tvit/backends.py decides for every path, and no
predictor around it.

The `plain` measure runs the export through them, beside the `engine` rows that run the same files through
t2tvit.deploy.create_predictor (predict.py's and the Python API's path), so that the report can set one against
the other; the direct route (direct_route.py) runs the official model's own exports through them. The paddle
backend has no plain row: its predictor is Paddle Inference's own handles, called as its documentation does.
Each session also says the settings it runs with (session_settings), as the runtime reports them.
"""
import json
import os

from .timing import time_eval
from .workdir import session_path

PLAIN_BACKENDS = ("onnxruntime", "openvino")
OPENVINO_REPORTED = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")


def session_settings(session):
    """{setting: value} of an OpenVINO CompiledModel or an ONNX Runtime InferenceSession, as the runtime holds
    them once compiled (not as asked for)."""
    if hasattr(session, "get_session_options"):
        options = session.get_session_options()
        return {"intra_op_num_threads": options.intra_op_num_threads,
                "inter_op_num_threads": options.inter_op_num_threads,
                "graph_optimization_level": str(options.graph_optimization_level),
                "providers": session.get_providers()}
    values = {key: session.get_property(key) for key in OPENVINO_REPORTED}
    return {key: v.get_type_name() if hasattr(v, "get_type_name") else str(v) for key, v in values.items()}  # f32


def plain_session(runtime, path, precision, threads):
    """(predict: images -> logits, the session) of `path` in `runtime` (openvino or onnxruntime)."""
    if runtime == "openvino":
        from t2tvit.backends import compile_openvino
        compiled = compile_openvino(path, precision, threads)
        output = compiled.output(0)
        return (lambda images: compiled(images)[output]), compiled
    from t2tvit.backends import onnxruntime_session
    session = onnxruntime_session(path, threads)
    name = session.get_inputs()[0].name
    return (lambda images: session.run(None, {name: images})[0]), session


def time_session(args, predict, session):
    """time_eval of a session's predict on numpy images; its settings kept beside its logits."""
    with open(session_path(args.work_dir, args.tag), "w") as f:
        json.dump(session_settings(session), f)
    return time_eval(args, lambda images: images, predict)


def measure_plain(args):
    """The export (its int8 model at int8) of --engine-backend in a plain session at --precision."""
    from t2tvit.export_files import int8_file, onnx_file
    model_dir = os.path.join(args.work_dir, "inference")
    path = int8_file(model_dir, args.engine_backend) if args.precision == "int8" else onnx_file(model_dir)[0]
    return time_session(args, *plain_session(args.engine_backend, path, args.precision, args.threads))
