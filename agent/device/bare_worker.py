"""Bare-runtime benchmark worker: imports only numpy and the runtime.

Run as a script (not through the agent package) so its peak RSS is that of
the bare runtime:  python bare_worker.py BACKEND MODEL TENSORS.npy THREADS PROVIDER FRAMES
Prints one JSON line: {"fps": ..., "peak_rss_kb": ..., "anon_kb": ..., "file_kb": ...}
(peak = VmHWM; anon/file = RssAnon/RssFile at the end of the run).
"""

import json
import sys
import time
from typing import Any

import numpy as np


def main() -> None:
    backend, model, tensors_path, threads, provider, frames = sys.argv[1:7]
    tensors = np.load(tensors_path)
    n_threads, n_frames = int(threads), int(frames)
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model, sess_options=options, providers=[provider])
        name = session.get_inputs()[0].name

        def call(x: Any) -> Any:
            return session.run(None, {name: x})
    else:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            from tflite_runtime.interpreter import Interpreter, OpResolverType
        resolver = (
            OpResolverType.AUTO if provider == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        interp = Interpreter(model_path=model, num_threads=n_threads, experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
        index = interp.get_input_details()[0]["index"]
        outputs = [d["index"] for d in interp.get_output_details()]

        def call(x: Any) -> Any:
            interp.set_tensor(index, x)
            interp.invoke()
            return [interp.get_tensor(i) for i in outputs]

    for i in range(min(10, n_frames)):
        call(tensors[i % len(tensors)])
    start = time.perf_counter()
    for i in range(n_frames):
        call(tensors[i % len(tensors)])
    elapsed = time.perf_counter() - start
    with open("/proc/self/status", encoding="ascii") as status:  # VmHWM: see bench.py on ru_maxrss
        fields = {
            line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmHWM", "Rss"))
        }
    print(
        json.dumps(
            {
                "fps": n_frames / elapsed,
                "peak_rss_kb": fields["VmHWM"],
                "anon_kb": fields["RssAnon"],
                "file_kb": fields["RssFile"],
            }
        )
    )


if __name__ == "__main__":
    main()
