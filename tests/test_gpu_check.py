"""``make gpu-check`` (verify/gpu_check.py).

- CPU: every check against devtools.standin_tensorrt.FakeCudart must PASS (the TensorRT one SKIPs: no real GPU), and a
  deliberately broken stand-in (a copy that corrupts a byte, a leak, a misaligned cudaMalloc, an old driver, capture
  that never works, ...) must FAIL the check that is about it, with a message saying what was measured.
- CPU: without a GPU, ``python -m devtools.gpu_check`` exits 2 at once with one clear message and still writes the
  JSON report (status "no-gpu").
- ``@pytest.mark.gpu``: the real checks on the real cudart, where an NVIDIA GPU is present.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import engine_manifest as em
from runtime.errors import BackendError
from tests.conftest import has_nvidia_gpu
from devtools import gpu_check as gc
from devtools.standin_tensorrt import FakeCudart

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cuda-environment", "cuda-calls", "runner-plumbing", "manifest-refusals", "tensorrt-vs-onnxruntime"]


def _run(cudart, **kw) -> dict[str, gc.CheckResult]:
    results = gc.run_checks(cudart, gc.device_properties(cudart, 0), 0, **kw)
    assert [r.name for r in results] == NAMES
    return {r.name: r for r in results}


# ---- broken stand-ins: each breaks one thing the checks are there to catch -------------------------
class CorruptingCudart(FakeCudart):
    """A device-to-host copy that flips one byte: what a bad pinned-memory path would look like."""

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        out = super().cudaMemcpyAsync(dst, src, n, kind, stream)
        if int(kind) == self.cudaMemcpyKind.cudaMemcpyDeviceToHost and n > 0:
            self.enqueue(stream, lambda: ctypes.memset(dst + n // 2, (ctypes.c_ubyte.from_address(dst + n // 2).value
                                                                      ^ 0x01), 1))
        return out


class LeakyCudart(FakeCudart):
    """cudaFree says success and frees nothing."""

    def cudaFree(self, ptr):
        return self._ok()


class MisalignedCudart(FakeCudart):
    """cudaMalloc returns a pointer 16 bytes past a 256-byte boundary."""

    def cudaMalloc(self, n):
        err, ptr = super().cudaMalloc(n + 16)
        with self.lock:
            kind, buf, _ = self.mem.pop(ptr)
            self.mem[ptr + 16] = (kind, buf, n)
        return err, ptr + 16


class DroppingD2DCudart(FakeCudart):
    """Device-to-device copies report success and copy nothing (so the stand-in engine leaves outputs stale)."""

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if int(kind) == self.cudaMemcpyKind.cudaMemcpyDeviceToDevice:
            return self._ok()
        return super().cudaMemcpyAsync(dst, src, n, kind, stream)


class NoCaptureCudart(FakeCudart):
    """Stream capture is refused, so the runner can never use a CUDA graph."""

    def cudaStreamBeginCapture(self, s, mode):
        return (self.cudaError_t.cudaErrorInvalidValue,)


class BadEventsCudart(FakeCudart):
    def cudaEventElapsedTime(self, start, end):
        return self._ok(-1.0)


# ---- CPU: the checks on the stand-in -------------------------------------------------------------
def test_every_check_passes_on_the_stand_in_and_frees_everything():
    cudart = FakeCudart()
    res = _run(cudart)
    for name in NAMES[:-1]:
        assert res[name].status == "PASS", (name, res[name].detail)
    assert res["tensorrt-vs-onnxruntime"].status == "SKIP"
    assert "stand-in cudart" in res["tensorrt-vs-onnxruntime"].detail
    assert cudart.mem == {} and cudart.streams == {} and not cudart.events and not cudart.graphs
    plumbing = res["runner-plumbing"].data
    assert plumbing["cuda_graphs"]["graph_stats"]["fallbacks"] == 0
    # one per worker thread, plus the main thread's compute_burst_ms
    assert plumbing["cuda_graphs"]["contexts"] == plumbing["plain"]["contexts"] == 4 + 1
    assert all(plumbing[k]["compute_burst_ms"] >= 0 for k in ("plain", "cuda_graphs"))  # #22: beside trtexec's
    assert "256-byte aligned" in res["cuda-calls"].detail and "bit-exact" in res["cuda-calls"].detail


@pytest.mark.parametrize("cudart, check, says", [
    (CorruptingCudart(), "cuda-calls", r"H2D->D2H: not bit-exact, 1 of \d+ bytes differ"),
    (CorruptingCudart(), "runner-plumbing", r"'y' vs 'x': not bit-exact"),
    (LeakyCudart(), "cuda-calls", r"device memory not back to baseline after freeing: \d+\.\d MiB still in use"),
    (LeakyCudart(), "runner-plumbing", r"device memory not back to baseline after close\(\)"),
    (MisalignedCudart(), "cuda-calls", r"cudaMalloc returned 0x[0-9a-f]+, expected a 256-byte aligned address"),
    (DroppingD2DCudart(), "cuda-calls", r"D2D->D2H: not bit-exact"),
    (DroppingD2DCudart(), "runner-plumbing", r"'y' vs 'x': not bit-exact"),
    (NoCaptureCudart(), "runner-plumbing", r"expected captures and replays and no fallback"),
    (BadEventsCudart(), "cuda-calls", r"cudaEventElapsedTime returned -1.0 ms, expected a finite time >= 0"),
    (FakeCudart(driver=12060, runtime=13000), "cuda-environment",
     r"built for CUDA 13\.0 but the driver supports CUDA 12\.6; expected a driver of at least CUDA 13\.x"),
    (FakeCudart(driver=0), "cuda-environment", r"cudaDriverGetVersion returned 0: no CUDA driver is loaded"),
], ids=["corrupt-calls", "corrupt-runner", "leak-calls", "leak-runner", "misaligned", "d2d-calls", "d2d-runner",
        "no-capture", "bad-events", "old-driver", "no-driver"])
def test_a_broken_stand_in_fails_the_right_check(cudart, check, says):
    import re

    res = _run(cudart)
    assert res[check].status == "FAIL", res[check].detail
    assert re.search(says, res[check].detail), res[check].detail
    assert res[check].data.get("problems")  # every problem is kept in the JSON, not only the first four
    assert res["manifest-refusals"].status == "PASS"  # GPU data only: unaffected by a broken cudart


def test_a_check_that_lets_a_mismatch_through_fails(monkeypatch):
    monkeypatch.setattr(em, "check_engine", lambda *a, **k: {})
    out = gc.run_check("manifest-refusals", lambda: gc.check_manifest_refusals(dict(FakeCudart().gpu)))
    assert out.status == "FAIL"
    assert "other GPU: accepted, expected EngineMismatchError saying 'engine built on 'NVIDIA Other GPU'" in out.detail


def test_manifest_refusals_use_the_probed_gpu():
    gpu = {"name": "NVIDIA H200", "compute_capability": "9.0", "device": 0}
    detail, data = gc.check_manifest_refusals(gpu)
    assert "'NVIDIA H200' sm 9.0" in detail and data["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    cases = gc._refusal_cases(gpu)
    assert "engine built on 8.7, this GPU is 9.0" in cases["other compute capability"][2]


def test_an_unexpected_exception_is_that_checks_failure():
    def boom():
        raise BackendError("CUDA cudaMalloc failed: cudaErrorMemoryAllocation (out of memory)")

    out = gc.run_check("cuda-calls", boom)
    assert out.status == "FAIL" and out.detail.startswith("BackendError: CUDA cudaMalloc failed")
    assert "Traceback" in out.data["traceback"]


def test_main_with_the_stand_in_writes_the_report(tmp_path, capsys):
    rc = gc.main(["--artifacts", str(tmp_path)], load_cudart=FakeCudart, gpu_present=lambda: True)
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["format"] == gc.FORMAT and report["status"] == "pass"
    assert report["counts"] == {"PASS": 4, "FAIL": 0, "SKIP": 1}
    assert [c["name"] for c in report["checks"]] == NAMES
    assert all(set(c) == {"name", "status", "detail", "seconds", "data"} for c in report["checks"])
    assert report["gpu"]["name"] == "NVIDIA Jetson AGX Orin" and "python" in report["environment"]
    lines = out.splitlines()
    assert lines[0] == "gpu-check: device 0 'NVIDIA Jetson AGX Orin' (sm 8.7)"
    assert [ln.split()[0] for ln in lines[1:6]] == ["PASS"] * 4 + ["SKIP"]
    assert lines[-1].startswith("gpu-check: 4 PASS, 0 FAIL, 1 SKIP in ")


def test_main_exits_1_when_a_check_fails(tmp_path, capsys):
    report_path = tmp_path / "elsewhere.json"
    rc = gc.main(["--artifacts", str(tmp_path), "--json", str(report_path)], load_cudart=LeakyCudart,
                 gpu_present=lambda: True)
    assert rc == 1
    report = json.loads(report_path.read_text())
    assert report["status"] == "fail" and report["counts"]["FAIL"] == 2
    assert "FAIL  cuda-calls" in capsys.readouterr().out


@pytest.mark.parametrize("load, present, device, says", [
    (FakeCudart, lambda: False, 0, "the NVIDIA driver reports none"),
    (lambda: (_ for _ in ()).throw(BackendError("no NVIDIA GPU/CUDA driver: cuda-python is not installed")),
     lambda: True, 0, "cuda-python is not installed"),
    (FakeCudart, lambda: True, 1, "cudaGetDeviceCount found 1 device(s), expected device 1 among them"),
])
def test_find_gpu_says_what_is_missing(load, present, device, says):
    cudart, gpu, why = gc.find_gpu(device, load, present)
    assert cudart is None and gpu is None and says in why


class NoDeviceCudart(FakeCudart):
    def cudaGetDeviceCount(self):
        return (self.cudaError_t.cudaErrorInvalidDevice, 0)


def test_find_gpu_reports_a_driver_error_and_a_driver_too_old_for_the_bindings():
    assert gc.find_gpu(0, NoDeviceCudart, lambda: True)[2] == \
        "cudaGetDeviceCount returned cudaErrorInvalidDevice (fake error)"
    why = gc.find_gpu(0, lambda: NoDeviceCudart(driver=12060, runtime=13050), lambda: True)[2]
    assert why.startswith("cudaGetDeviceCount returned cudaErrorInvalidDevice (fake error); cuda-bindings stand-in "
                          "is built for CUDA 13.5 but the driver supports CUDA 12.6"), why
    assert "pip install 'cuda-python>=12,<13'" in why


def test_runner_warnings_go_into_the_report_not_between_verdict_lines(capsys):
    res = _run(NoCaptureCudart())
    log = res["runner-plumbing"].data["log"]
    assert res["runner-plumbing"].data["log_records"] >= len(log) > 0
    assert "CUDA graph capture failed" in log[0]
    assert "capture failed" not in capsys.readouterr().err


def test_integrated_gpu_allows_system_memory_noise_but_not_a_big_leak():
    assert gc.memory_slack(FakeCudart(integrated=True), 0) == gc.INTEGRATED_SLACK
    res = _run(LeakyCudart(integrated=True))
    assert res["cuda-calls"].status == "FAIL" and res["cuda-calls"].data["slack_bytes"] == gc.INTEGRATED_SLACK
    assert "integrated: shares system memory" in res["cuda-environment"].detail


def test_no_gpu_exits_2_with_one_message_and_writes_the_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if has_nvidia_gpu():  # this checks the no-GPU path: hide the GPU
        env["EDGEATTN_FORCE_CPU"] = "1"
    out = subprocess.run([sys.executable, "-m", "devtools.gpu_check", "--artifacts", str(tmp_path / "art")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith("gpu-check: no usable NVIDIA GPU: ")
    assert "Looked for: a GPU the NVIDIA driver reports" in out.stderr and "Nothing was checked" in out.stderr
    report = json.loads((tmp_path / "art" / "gpu-check.json").read_text())
    assert report["status"] == "no-gpu" and report["reason"] and report["checks"] == [] and report["gpu"] is None
    assert report["environment"]["python"] == sys.version.split()[0]


def test_importing_gpu_check_needs_no_cuda_tensorrt_onnx_or_torch():
    code = ("import sys\n"
            "import devtools.gpu_check, devtools.standin_tensorrt\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'cuda.bindings')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr


def test_tiny_onnx_runs_on_onnxruntime_as_relu_of_an_affine_map(tmp_path):
    """Check 5's model, on the CPU half of its comparison: the spec travels in the metadata, batch is dynamic."""
    import onnx
    from onnx import numpy_helper

    from runtime.ort_backend import OrtRunner

    path = tmp_path / "m" / "fp32.sim.onnx"
    spec = gc.write_tiny_onnx(path)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    with OrtRunner(path, providers="cpu") as r:
        assert r.contract.bounds["batch"].max == 16
        for batch in gc.PARITY_BATCHES:
            x = spec.example_inputs({"batch": batch}, seed=batch)["x"]
            want = np.maximum(x @ weights["W"] + weights["B"], 0)
            np.testing.assert_allclose(r.infer({"x": x})["y"], want, rtol=1e-5, atol=1e-6)


def test_parity_check_skips_without_a_real_gpu():
    out = gc.run_check("tensorrt-vs-onnxruntime", lambda: gc.check_tensorrt_parity(FakeCudart().gpu, real_gpu=False))
    assert out.status == "SKIP" and "stand-in cudart" in out.detail


# ---- GPU: the real checks ------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_check_passes_on_this_gpu(tmp_path, capsys):
    rc = gc.main(["--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert rc == 0 and report["status"] == "pass", out
    assert all(statuses[n] == "PASS" for n in NAMES[:-1]), out
    assert report["seconds"] < gc.TIME_BUDGET_S, out
    flavours, _ = gc.tensorrt_flavours()
    if not flavours:
        assert statuses["tensorrt-vs-onnxruntime"] == "SKIP"


@pytest.mark.gpu
def test_gpu_cuda_calls_and_runner_plumbing_on_the_real_cudart():
    cudart = em.import_cudart()
    gpu = gc.device_properties(cudart, 0)
    detail, data = gc.check_cuda_calls(cudart)
    assert data["memory_lost_bytes"] <= gc.MEMORY_SLACK and data["h2d_gb_s"] > 0, detail
    detail, data = gc.check_runner_plumbing(cudart, gpu)
    assert data["cuda_graphs"]["graph_stats"]["fallbacks"] == 0, detail


# ---- scripts/gpu_device_check.sh (#22 item 13) ---------------------------------------------------------------------
@pytest.mark.parametrize("check_rc,pytest_rc,want", [(0, 0, 0), (1, 0, 1), (0, 1, 1), (2, 1, 2), (0, 5, 5)])
def test_device_check_script_exits_with_the_worst_status(tmp_path, check_rc, pytest_rc, want):
    """The old script always exited 0 (tee last, pytest's status dropped); now the worst step status comes out,
    and each step's status is in its log. A stand-in python answers for gpu_check and pytest."""
    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'case "$*" in *devtools.gpu_check*) echo "gpu-check ran"; exit {check_rc};;\n'
                    f'*pytest*) echo "pytest ran"; exit {pytest_rc};;\n'
                    '*) cat >/dev/null; echo "env ran";; esac\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(root / "scripts" / "gpu_device_check.sh")], cwd=root, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "OUT": str(out)})
    assert res.returncode == want, res.stdout + res.stderr
    assert f"gpu-check exit: {check_rc}" in (out / "gpu-check.txt").read_text()
    assert f"pytest-gpu exit: {pytest_rc}" in (out / "pytest-gpu.txt").read_text()
    assert f"worst exit status {want}" in res.stdout
