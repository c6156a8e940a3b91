"""Bench worker processes and the parent's handle on them.

Each runtime candidate (one artifact on one backend) runs in its own process; the PyTorch peers of a model share
one process (they share the module). The parent drives them one at a time over a pipe (JSON lines), so:
- a backend that segfaults kills only its worker: the parent records the crash and carries on;
- no runtime's thread pool (libgomp, ORT, TBB) sits in the process another runtime is being timed in;
- timing happens inside the worker (``LocalTimer``), so the pipe adds nothing to the measured calls.

    python -m bench.worker --in-fd R --out-fd W --threads 2 --torch NAME --artifacts DIR --peers eager,compile
    python -m bench.worker --in-fd R --out-fd W --threads 2 --runner PATH --backend B --mode M --model NAME

Commands (one JSON object per line, one reply each): feed {batch, seq_len}, gen_points {points: [{tag, rows, new}]}
(``--generation`` workers: bench.generation), warm {key, warmup_s, warmup_calls, heavy_call_s},
time {key, slice_s, min_calls, max_calls, switch_warmup}, smoke {batches, seq_len}, predict {key, inputs, out,
batch, pad_id (null: none)}, exit. After loading, the worker sends a hello: {ok, spec, candidates: [...]}.
``--generation`` workers also answer gen_tokens {rows, new}: each candidate's greedy token ids (compared across
candidates); with ``--peer-kind`` of bench.decoder_peers and ``--runner`` its converted folder, one such peer.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench.candidates import RunnerCandidate, make_feed
from bench.peers import TorchCandidate
from bench.timing import LocalTimer, describe
from runtime.child import child_env, describe_returncode, python_module
from runtime.modelspec import precision_of
from runtime.ort_backend import TF32_ENV
from pipeline.artifacts import ModelRef
from runtime.preprocess import feed_batches
from zoo.registry import load_for_export
from zoo.spec import ModelSpec

HELLO_TIMEOUT_S = 900.0
COMMAND_TIMEOUT_S = 900.0


class WorkerDied(RuntimeError):
    """The worker process exited (crash, kill) or stopped answering."""


class RemoteError(RuntimeError):
    """The worker caught an exception while serving a command."""


# ---- parent side ---------------------------------------------------------------------------------------------
class Worker:
    """A running worker process. ``request(msg)`` -> reply dict; raises WorkerDied / RemoteError."""

    def __init__(self, argv: list[str], label: str, env: dict[str, str] | None = None) -> None:
        self.label = label
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        self._log = tempfile.TemporaryFile()
        cmd = python_module("bench.worker", "--in-fd", p2c_r, "--out-fd", c2p_w, *argv)
        self.proc = subprocess.Popen(cmd, pass_fds=(p2c_r, c2p_w), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=child_env(env))
        os.close(p2c_r)
        os.close(c2p_w)
        self._w = p2c_w
        self._r = c2p_r
        self._buf = b""
        self.dead: str | None = None
        self.hello: dict[str, Any] | None = None

    def _tail(self) -> str:
        try:
            self._log.seek(0)
            lines = [ln for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        except (OSError, ValueError):
            return ""
        return " | ".join(lines[-3:])[-400:]

    def _die(self, why: str) -> WorkerDied:
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        if rc is not None and rc < 0 and rc != -signal.SIGKILL:
            why += f" ({describe_returncode(rc)}: backend crash)"
        elif rc:
            why += f" ({describe_returncode(rc)})"
        tail = self._tail()
        self.dead = why + (f"; last output: {tail}" if tail else "")
        return WorkerDied(f"{self.label}: {self.dead}")

    def _readline(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._die(f"no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self._r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise self._die("worker exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_hello(self, timeout: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
        if self.dead:
            raise WorkerDied(f"{self.label}: {self.dead}")
        self.hello = self._readline(timeout)
        return self.hello

    def hello_or_error(self, timeout: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
        """The worker's hello, or ``{"ok": False, "error": why}`` when it died before sending one."""
        try:
            return self.wait_hello(timeout)
        except WorkerDied as e:
            return {"ok": False, "error": str(e)}

    def request(self, msg: dict[str, Any], timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        if self.dead:
            raise WorkerDied(f"{self.label}: {self.dead}")
        try:
            os.write(self._w, (json.dumps(msg) + "\n").encode())
        except (BrokenPipeError, OSError):
            raise self._die("worker gone") from None
        reply = self._readline(timeout)
        if not reply.get("ok"):
            raise RemoteError(reply.get("error", "unknown worker error"))
        return reply

    def close(self) -> None:
        if self.proc.poll() is None and not self.dead:
            try:
                os.write(self._w, b'{"cmd": "exit"}\n')
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


class RemoteTimer:
    """LocalTimer's interface, served by a worker for one candidate key."""

    def __init__(self, worker: Worker, key: str) -> None:
        self.worker, self.key = worker, key

    def warm(self, warmup_s: float, warmup_calls: int, heavy_call_s: float = 1e9,
             max_calls: int = 50) -> dict[str, Any]:
        return self.worker.request({"cmd": "warm", "key": self.key, "warmup_s": warmup_s, "warmup_calls": warmup_calls,
                                    "heavy_call_s": min(heavy_call_s, 1e9), "max_calls": max_calls})

    def time_slice(self, slice_s: float, min_calls: int, max_calls: int, switch_warmup: bool) -> list[float]:
        return self.worker.request({"cmd": "time", "key": self.key, "slice_s": slice_s, "min_calls": min_calls,
                                    "max_calls": max_calls, "switch_warmup": bool(switch_warmup)})["samples"]


def adopt_in_turn(launches: Sequence[tuple[Callable[[], tuple], bool]], adopt: Callable[..., list],
                  parallel: int = 2) -> list:
    """Start workers (``launch()`` -> the arguments of ``adopt``) and adopt them (``adopt`` waits for the hello,
    i.e. until the worker has loaded its candidates): CPU workers ``parallel`` at a time; a GPU worker (flag True)
    alone: every worker still loading is adopted first, and the GPU one before the next starts, so no two workers
    build engines or take GPU memory at once."""
    out: list = []
    pending: list = []
    for launch, on_gpu in launches:
        if on_gpu:
            while pending:
                out += adopt(*pending.pop(0))
            out += adopt(*launch())
            continue
        pending.append(launch())
        if len(pending) >= parallel:
            out += adopt(*pending.pop(0))
    while pending:
        out += adopt(*pending.pop(0))
    return out


# ---- worker side ----------------------------------------------------------------------------------------------
def _identity(c) -> dict[str, Any]:
    return {"key": c.key, "model": c.model, "backend": c.backend, "artifact": c.artifact, "precision": c.precision,
            "mode": c.mode, "is_peer": c.is_peer, "peer_kind": c.peer_kind, "error": c.error,
            "load_seconds": c.load_seconds, "notes": c.notes}


def tf32_environment(runner: str | None, mode: str, precision: str | None) -> dict[str, str]:
    """Process environment an ONNX Runtime TensorRT-EP worker needs so its fp32 rows compute in FP32: the TensorRT
    EP has no TF32 option and TensorRT allows TF32 by default; NVIDIA_TF32_OVERRIDE=0 turns it off for TensorRT,
    cuBLAS and cuDNN in this process (each candidate has its own worker, so nothing else is affected)."""
    if runner and mode == "tensorrt-ep" and (precision or precision_of(Path(runner).name, default=None)) == "fp32":
        return {TF32_ENV: "0"}
    return {}


def _build(args) -> tuple[list, Any]:
    """(candidates, ModelSpec or None), every candidate loaded (load errors recorded on the candidate)."""
    if args.generation:  # a decoder: generate calls (bench.generation), no spec-shaped feeds
        from bench.generation_candidates import build_candidates

        return build_candidates(args), None
    if args.torch:
        import torch

        torch.set_num_threads(args.threads)
        built = load_for_export(ModelRef.resolve(args.torch, args.artifacts))
        built.module.eval()
        cands = [TorchCandidate(built, k) for k in args.peers.split(",") if k]
        for c in cands:
            c.load()
        return cands, built.spec
    c = RunnerCandidate(args.model, args.runner, args.backend, args.mode, args.precision or None,
                        threads=args.threads, is_peer=bool(args.peer_kind), peer_kind=args.peer_kind or None)
    c.load()
    spec = None
    if c.runner is not None and getattr(c.runner, "spec", None):
        spec = ModelSpec.from_dict(c.runner.spec)
    return [c], spec


def _serve(cands: list, spec, rf, send) -> None:
    by_key = {c.key: c for c in cands}
    timers: dict[str, LocalTimer] = {}
    compile_s: dict[str, float | None] = {}
    for line in rf:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "exit":
            break
        try:
            if cmd == "feed":
                feed = make_feed(spec, int(msg["batch"]), msg.get("seq_len"))
                timers, errors, compile_s = {}, {}, {}
                for c in cands:
                    if c.error is None:
                        try:
                            timers[c.key] = LocalTimer(c.call(feed))
                            if getattr(c, "compile_seconds_of", None):  # torch.compile peers: compiled per shape
                                compile_s[c.key] = c.compile_seconds_of(feed)
                        except Exception as e:  # noqa: BLE001
                            errors[c.key] = describe(e)
                send({"ok": True, "errors": errors})
            elif cmd == "gen_points":  # decoders: one timer per candidate and point, keyed <key>@<tag>
                from bench.generation_candidates import point_timers

                timers, errors = point_timers(cands, msg["points"], LocalTimer)
                send({"ok": True, "errors": errors})
            elif cmd == "gen_tokens":  # decoders: greedy token ids per candidate, compared across candidates
                from bench.generation_candidates import greedy_tokens

                tokens, errors = greedy_tokens(cands, msg["rows"], int(msg["new"]))
                send({"ok": True, "tokens": tokens, "errors": errors})
            elif cmd == "warm":
                got = timers[msg["key"]].warm(float(msg["warmup_s"]), int(msg["warmup_calls"]),
                                              float(msg.get("heavy_call_s", 1e9)), int(msg.get("max_calls", 50)))
                compiled = compile_s.get(msg["key"])
                if compiled is not None:  # compiled when the feed arrived: that was the first call at this shape
                    got["first_call_s"] = compiled
                send({"ok": True, **got})
            elif cmd == "time":
                samples = timers[msg["key"]].time_slice(float(msg["slice_s"]), int(msg["min_calls"]),
                                                        int(msg["max_calls"]), bool(msg["switch_warmup"]))
                send({"ok": True, "samples": samples})
            elif cmd == "smoke":
                errors = {}
                for c in cands:
                    if c.error is not None:
                        continue
                    try:
                        for b in msg["batches"]:
                            c.call(make_feed(spec, int(b), msg.get("seq_len")))()
                    except Exception as e:  # noqa: BLE001
                        errors[c.key] = describe(e)
                send({"ok": True, "errors": errors})
            elif cmd == "predict":
                c = by_key[msg["key"]]
                with np.load(msg["inputs"]) as z:
                    x = {k: z[k] for k in z.files}
                pad = msg.get("pad_id")
                outs = [c.logits(feed) for feed in feed_batches(x, int(msg["batch"]), None if pad is None else int(pad))]
                np.save(msg["out"], np.concatenate(outs).astype(np.float32))
                send({"ok": True})
            else:
                send({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - reported to the parent, which records it
            send({"ok": False, "error": describe(e)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in-fd", type=int, required=True)
    ap.add_argument("--out-fd", type=int, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--torch", default=None, help="model name: serve its PyTorch peers")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--peers", default="eager")
    ap.add_argument("--runner", default=None, help="artifact path: serve it on --backend/--mode")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--mode", default="all")
    ap.add_argument("--precision", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--peer-kind", default="")
    ap.add_argument("--generation", action="store_true", help="a decoder with KV cache: time generate calls")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rf = os.fdopen(args.in_fd, "r", encoding="utf-8")
    out_fd = args.out_fd

    def send(obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, default=str) + "\n").encode()
        while data:
            data = data[os.write(out_fd, data):]

    os.environ.update(tf32_environment(args.runner, args.mode, args.precision))  # before any CUDA library loads
    try:
        cands, spec = _build(args)
    except Exception as e:  # noqa: BLE001
        send({"ok": False, "error": f"worker could not start: {describe(e)}"})
        return 1
    send({"ok": True, "spec": spec.to_dict() if spec is not None else None,
          "candidates": [_identity(c) for c in cands]})
    _serve(cands, spec, rf, send)
    for c in cands:
        c.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
