"""The Triton Python-backend model: the whole NextStep-1 loop inside one model (no ensemble).

A repository's ``model.py`` re-exports ``TritonPythonModel`` from here. Settings come from the model config's
``parameters`` (written by ``nextstep_trt.serve.repo``); paths in them are relative to the model's folder.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError

from .limits import EDIT_MODEL, INPUTS


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

    return pb_utils


def model_parameters(model_config: dict) -> dict[str, str]:
    """The string parameters of a model config (as the Python backend passes it, parsed from JSON)."""
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def asset(root: Path, params: dict[str, str], key: str) -> Path:
    """A folder named by a config parameter, inside the model's folder (no '..', absolute path or link leaving it).
    With ``link: symlink`` (``triton-repo --link symlink``, and ``serve``) the artifacts folder itself is the link
    the operator asked for: it is checked as written, and the files inside it are checked by its manifest."""
    from nextstep_trt.core.paths import inside

    linked = key == "artifacts" and params.get("link") == "symlink"
    return inside(root, params.get(key, ""), f"{root / 'config.pbtxt'}: parameter {key}", follow_links=not linked)


class TritonPythonModel:
    """Triton calls initialize once per instance, execute per batch of requests, finalize at unload."""

    def initialize(self, args: dict) -> None:
        """Open the backend, the tokenizer and the caps; warm the graphs up."""
        from .handler import open_runner

        self.pb = _pb_utils()
        config = json.loads(args["model_config"])
        params = model_parameters(config)
        root = Path(args["model_repository"])
        self.name = config["name"]
        self.inputs = [t.name for t in INPUTS[self.name]]
        artifacts, model_dir = asset(root, params, "artifacts"), asset(root, params, "model_dir")
        self.runner = open_runner(artifacts, model_dir, params["backend"],
                                  params.get("precision", "fp32"), edit=self.name == EDIT_MODEL,
                                  max_batch=int(config["max_batch_size"]), threads=int(params.get("threads", "0")))
        if params.get("warmup", "1") == "1":
            self.runner.warm_up()
        self._log(f"{self.name}: ready on {params['backend']} ({params.get('precision', 'fp32')}), "
                  f"caps {json.dumps(self.runner.limits.to_dict())}")

    def _log(self, text: str, verbose: bool = False) -> None:
        logger = getattr(self.pb, "Logger", None)
        if logger is not None:
            (logger.log_verbose if verbose else logger.log_info)(text)

    def _arrays(self, request) -> dict[str, np.ndarray]:
        out = {}
        for name in self.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                out[name] = tensor.as_numpy()
        return out

    def _response(self, result):
        pb = self.pb
        if isinstance(result, np.ndarray):
            return pb.InferenceResponse(output_tensors=[pb.Tensor("image", np.ascontiguousarray(result))])
        if isinstance(result, UserError):
            error = pb.TritonError(str(result), pb.TritonError.INVALID_ARG)               # HTTP 400
            return pb.InferenceResponse(output_tensors=[], error=error)
        detail = "".join(traceback.format_exception(type(result), result, result.__traceback__))
        self._log(f"{self.name}: internal error: {detail}")
        message = f"internal error ({type(result).__name__}); see the server log"
        return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, pb.TritonError.INTERNAL))

    def execute(self, requests: list) -> list:
        """One response per request, in order; a bad request never fails the others in its batch."""
        start = time.perf_counter()
        loops = self.runner.loops
        results = self.runner.execute([self._arrays(r) for r in requests])
        self._log(f"{self.name}: {len(requests)} request(s) in {self.runner.loops - loops} loop(s), "
                  f"{time.perf_counter() - start:.3f} s", verbose=True)
        return [self._response(r) for r in results]

    def finalize(self) -> None:
        """Release the backend's sessions and buffers."""
        self.runner.close()
