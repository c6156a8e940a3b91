"""``python -m devtools.harden [--artifacts DIR] [--examples N] [--requests N] [--quick]`` (``make harden``): the
hardening suite, on two tiny models of its own (a text classifier with a tokenizer, an image classifier) taken
through the pipeline in ``<artifacts>/harden/``.

- **Bad input** (property-based, hypothesis): feeds with unknown/missing names, wrong dtypes and ranks, shapes out
  of the profile, empty batches, NaN/Inf, ids outside the vocabulary, lists, non-contiguous and big-endian arrays,
  through ``Runner.infer`` on every CPU backend (each backend in a child process, so a crash is counted, not
  fatal); junk text for the tokenizer; junk, truncated, empty and text files as images; and the CLIs
  (``python -m runtime``, ``python -m edgeattn``) on bad files and arguments. Wanted: a typed error (exit status 2
  and one ``error:`` line in a CLI) for every bad input, an answer for every good one, never a crash.
- **Faults**: each stage (export, simplify, quantize, engines, verify) is killed with SIGKILL part-way through a
  rebuild for a changed model; every artifact left must still load, the rerun must complete, and verify must pass
  against the changed model (nothing stale kept). A worker that crashes in verify and in bench becomes a failed row.
- **Tampering**: ONNX external data outside the model folder, a changed engine, a changed or corrupt engine
  manifest, a checkpoint or weights file with pickled code: all refused.
- **Memory**: resident memory of a runner over ``--requests`` calls after warm-up, per backend (MB per 10k).
- **The served endpoint** (``devtools.harden_serve``): the bundled Triton server over ``edgeattn triton``'s repository
  of the two models: bad requests get HTTP 4xx, never a hang, a 5xx or a dead server; a model's stub killed while it
  loads leaves the other model serving; the server's memory over ``--requests`` requests.

Writes ``<artifacts>/harden.json`` and ``harden.md``; exits 1 when anything was not as wanted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.child import python_module, run_child
from runtime.cpu import cpu_info
from pipeline.artifacts import ModelRef
from pipeline.stage import cli
from verify.plan import openvino_available
from devtools.harden_cases import MODELS, MODULE_NAME, MODULE_SOURCE, write_subjects
from zoo.io import atomic_write_json, atomic_write_text, read_json, sha256_file

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("export", "simplify", "quantize", "engines", "verify")
ONNX_FILES = ("fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx", "int8.cpu.onnx")


class Suite:
    def __init__(self, artifacts: Path, examples: int, requests: int, seed: int = 0):
        self.work = artifacts / "harden"
        self.art = self.work / "art"
        self.examples, self.requests = examples, requests
        self.rng = np.random.default_rng(seed)
        self.mods: Path | None = None
        self.report: dict[str, Any] = {"machine": cpu_info(), "examples": examples, "requests": requests}

    # ---- helpers ----------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        return {"PYTHONPATH": f"{self.mods}{os.pathsep}{ROOT}", **extra}

    def stage(self, stage: str, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
        return run_child(python_module("edgeattn", stage, "--models", ",".join(MODELS), "--artifacts", self.art,
                                       *args), timeout, env=env or self.env())

    def folder(self, model: str) -> Path:
        return ModelRef.resolve(model, self.art).folder

    def set_version(self, version: int) -> None:
        (self.mods / f"{MODULE_NAME}.py").write_text(
            MODULE_SOURCE.replace('VERSION = int(os.environ.get("HARDEN_MODEL_VERSION", "1"))', f"VERSION = {version}"))

    # ---- set-up -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.mods = write_subjects(self.work)
        self.set_version(1)
        text_dir = self.folder(MODELS[0])
        text_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.work / "tokenizer.json", text_dir / "tokenizer.json")
        times = {}
        for st in STAGES:
            res = self.stage(st)
            times[st] = res.seconds
            if not res.ok:
                raise SystemExit(f"harden: set-up stage {st} failed: {res.describe()}\n{res.stdout[-2000:]}")
        self.report["setup_stage_seconds"] = {k: round(v, 2) for k, v in times.items()}

    # ---- bad input --------------------------------------------------------------------------------------
    def child_fuzz(self, what: str, path: Path | str, backend: str = "onnxruntime", preprocess: dict | None = None,
                   examples: int | None = None) -> dict[str, Any]:
        out = self.work / f"fuzz-{what}-{Path(str(path)).parent.name}-{Path(str(path)).name}-{backend}.json"
        res = run_child(python_module("devtools.harden_cases", "--what", what, "--path", path, "--backend", backend,
                                      "--examples", examples or self.examples, "--preprocess",
                                      json.dumps(preprocess or {}), "--out", out), 1800, env=self.env())
        if not res.ok:
            return {"tried": 1, "crashed": res.describe(tail_lines=2)}
        return json.loads(out.read_text())

    def bad_inputs(self) -> None:
        sec: dict[str, Any] = {}
        backends = ["onnxruntime"] + (["openvino"] if openvino_available() else [])
        for model in MODELS:
            folder = self.folder(model)
            for art in ("fp32.sim.onnx", "int8.qdq.onnx"):
                for be in backends:
                    sec[f"runner {folder.name}/{art} {be}"] = self.child_fuzz("runner", folder / art, be)
        sec["tokenizer"] = self.child_fuzz("text", self.folder(MODELS[0]) / "tokenizer.json")
        spec = read_json(self.folder(MODELS[1]) / "spec.json")
        sec["image files"] = self.child_fuzz("images", self.work / "images", preprocess=spec["preprocess"],
                                             examples=max(20, self.examples // 4))
        sec["cli"] = self.cli_cases()
        self.report["bad_input"] = sec

    def cli_cases(self) -> dict[str, Any]:
        """Each bad invocation must exit 2 with one ``error:`` line and no traceback; good ones exit 0."""
        text, image = self.folder(MODELS[0]), self.folder(MODELS[1])
        bad = self.work / "cli"
        bad.mkdir(exist_ok=True)
        (bad / "empty.onnx").write_bytes(b"")
        (bad / "text.onnx").write_text("not a model\n")
        (bad / "model.bin").write_bytes(b"\0" * 16)
        (bad / "trunc.onnx").write_bytes((image / "fp32.sim.onnx").read_bytes()[:300])
        (bad / "junk.png").write_bytes(os.urandom(300))
        (bad / "fake.engine").write_bytes(os.urandom(300))
        invalid_utf8 = b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape")
        rt = lambda *a: python_module("runtime", *a)  # noqa: E731
        ea = lambda *a: python_module("edgeattn", *a)  # noqa: E731
        cases = [
            ("good text", rt(text / "fp32.sim.onnx", "--text", "a fine film"), 0),
            ("good image", rt(image / "fp32.sim.onnx", "--image", self.work / "images" / "good.png"), 0),
            ("missing model", rt(bad / "nope.onnx", "--info"), 2),
            ("empty model", rt(bad / "empty.onnx", "--info"), 2),
            ("text file as model", rt(bad / "text.onnx", "--info"), 2),
            ("truncated model", rt(bad / "trunc.onnx", "--info"), 2),
            ("unknown extension", rt(bad / "model.bin", "--info"), 2),
            ("junk engine", rt(bad / "fake.engine", "--info"), 2),
            ("engine backend on onnx", rt(image / "fp32.sim.onnx", "--info", "--backend", "tensorrt"), 2),
            ("junk image", rt(image / "fp32.sim.onnx", "--image", bad / "junk.png"), 2),
            ("missing image", rt(image / "fp32.sim.onnx", "--image", bad / "nope.png"), 2),
            ("text to an image model", rt(image / "fp32.sim.onnx", "--text", "hello"), 2),
            ("image to a text model", rt(text / "fp32.sim.onnx", "--image", self.work / "images" / "good.png"), 2),
            ("bad --pad-to", rt(text / "fp32.sim.onnx", "--text", "x", "--pad-to", "lots"), 2),
            ("--pad-to past the profile", rt(text / "fp32.sim.onnx", "--text", "x", "--pad-to", "999"), 2),
            ("invalid UTF-8 text", rt(text / "fp32.sim.onnx", "--text", invalid_utf8), None),
            ("huge text", rt(text / "fp32.sim.onnx", "--text", "word " * 20000), 0),
            ("empty text", rt(text / "fp32.sim.onnx", "--text", ""), 0),
            ("unknown model name", ea("export", "--models", "nomodule:nofactory", "--artifacts", bad / "a"), 2),
            ("verify without artifacts", ea("verify", "--models", "harden_models:tiny_image", "--artifacts",
                                             bad / "b", "--strict"), None),
            ("missing --data", ea("export", "--models", "harden_models:tiny_image", "--artifacts", bad / "c",
                                  "--data", bad / "no-such-data.npz"), 2),
        ]
        rows = []
        for name, argv, want in cases:
            res = run_child(argv, 300, env=self.env())
            # our CLIs print "error: ..."; an argument argparse rejects prints usage and "<prog>: error: ..."
            err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:") or ": error: " in ln]
            traceback = "Traceback (most recent call last)" in res.stderr
            if want is None:  # either answer is right as long as it is a clean one
                ok = (res.returncode == 0 or (res.returncode == 2 and err_lines)) and not traceback
            elif want == 2:
                ok = res.returncode == 2 and len(err_lines) >= 1 and not traceback
            else:
                ok = res.returncode == 0 and not traceback
            rows.append({"case": name, "returncode": res.returncode, "expected": want, "ok": bool(ok),
                         "error_line": err_lines[0][:300] if err_lines else None,
                         **({} if ok else {"stderr_tail": res.stderr[-600:]})})
        return {"tried": len(rows), "ok": sum(r["ok"] for r in rows), "cases": rows}

    # ---- tampering ----------------------------------------------------------------------------------------
    def tampering(self) -> None:
        rows = []
        rows += self._external_data()
        rows += self._engine_tamper()
        rows += self._pickled_code()
        self.report["tampering"] = {"tried": len(rows), "refused": sum(r["refused"] for r in rows), "cases": rows}

    def _expect_refusal(self, name: str, fn, error_type) -> dict[str, Any]:
        try:
            fn()
            return {"case": name, "refused": False, "error": None}
        except error_type as e:
            return {"case": name, "refused": True, "error": f"{type(e).__name__}: {e}"[:300]}
        except Exception as e:  # noqa: BLE001
            return {"case": name, "refused": False, "error": f"untyped {type(e).__name__}: {e}"[:300]}

    def _external_data(self) -> list[dict[str, Any]]:
        import onnx

        from runtime.errors import ModelLoadError
        from runtime.loader import open_runner

        d = self.work / "tamper" / "model"
        d.mkdir(parents=True, exist_ok=True)
        src = onnx.load(str(self.folder(MODELS[1]) / "fp32.sim.onnx"))
        onnx.save(src, str(d / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="weights.bin", size_threshold=256)  # the weights; small shape tensors stay inline
        (d.parent / "outside.bin").write_bytes((d / "weights.bin").read_bytes())
        rows = []
        for label, loc in (("parent folder", "../outside.bin"), ("absolute path", str(d.parent / "outside.bin"))):
            m = onnx.load(str(d / "ext.onnx"), load_external_data=False)
            for t in m.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = loc
            bad = d / f"escape-{label.split()[0]}.onnx"
            bad.write_bytes(m.SerializeToString())
            for be in ["onnxruntime"] + (["openvino"] if openvino_available() else []):
                rows.append(self._expect_refusal(f"external data in the {label} ({be})",
                                                 lambda b=bad, be=be: open_runner(b, be).close(), ModelLoadError))
        ok = self._expect_refusal("external data beside the model (must load)",
                                  lambda: open_runner(d / "ext.onnx").close(), ModelLoadError)
        ok["refused"] = not ok["refused"]  # here loading is the wanted outcome
        rows.append(ok)
        return rows

    def _engine_tamper(self) -> list[dict[str, Any]]:
        from runtime import engine_manifest as em
        from runtime.errors import EngineMismatchError

        engines = sorted(self.folder(MODELS[1]).glob("*.engine"))
        if not engines:
            return [{"case": "engine tampering", "refused": True, "error": None,
                     "skipped": "no engine was built (no TensorRT / TensorRT-RTX here)"}]
        src = engines[0]
        man = em.read_manifest(src)
        flavor, version = man["flavor"], man["tensorrt"]["version"]
        d = self.work / "tamper" / "engine"
        d.mkdir(parents=True, exist_ok=True)
        rows = []

        def fresh() -> Path:
            p = d / src.name
            shutil.copy(src, p)
            shutil.copy(em.manifest_path(src), em.manifest_path(p))
            return p

        p = fresh()
        ok = self._expect_refusal("untouched engine (must pass)", lambda: em.check_engine(p, flavor, version),
                                  EngineMismatchError)
        ok["refused"] = not ok["refused"]
        rows.append(ok)
        p = fresh()
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
        rows.append(self._expect_refusal("one engine byte flipped", lambda: em.check_engine(p, flavor, version),
                                         EngineMismatchError))
        for label, edit in (("manifest sha256 edited", lambda m: {**m, "engine_sha256": "0" * 64}),
                            ("manifest flavour edited", lambda m: {**m, "flavor": "trt10"}),
                            ("manifest version edited", lambda m: {**m, "tensorrt": {**m["tensorrt"], "version": "9.9"}})):
            p = fresh()
            em.manifest_path(p).write_text(json.dumps(edit(dict(man))))
            rows.append(self._expect_refusal(label, lambda p=p: em.check_engine(p, flavor, version), EngineMismatchError))
        p = fresh()
        em.manifest_path(p).write_text("{ not json")
        rows.append(self._expect_refusal("manifest corrupt", lambda: em.check_engine(p, flavor, version),
                                         EngineMismatchError))
        p = fresh()
        em.manifest_path(p).unlink()
        rows.append(self._expect_refusal("manifest missing", lambda: em.check_engine(p, flavor, version),
                                         EngineMismatchError))
        return rows

    def _pickled_code(self) -> list[dict[str, Any]]:
        import torch

        from zoo.built import CheckpointError
        from zoo.registry import CHECKPOINT_FORMAT, create_model, load_checkpoint

        d = self.work / "tamper" / "pickle"
        d.mkdir(parents=True, exist_ok=True)
        marker = d / "code-ran"

        class Payload:
            def __reduce__(self):
                return (Path.touch, (marker,))

        torch.save({"format": CHECKPOINT_FORMAT, "model": "vit", "config": {}, "state_dict": {}, "x": Payload()},
                   d / "model.pt")
        torch.save({"weight": Payload()}, d / "weights.pt")
        sys.path.insert(0, str(self.mods))
        try:
            rows = [self._expect_refusal("checkpoint with pickled code", lambda: load_checkpoint(d / "model.pt"),
                                         CheckpointError),
                    self._expect_refusal("--weights file with pickled code",
                                         lambda: create_model(MODELS[1], weights=str(d / "weights.pt")), CheckpointError)]
        finally:
            sys.path.remove(str(self.mods))
        for r in rows:
            if marker.exists():
                r["refused"], r["error"] = False, f"the pickled code RAN ({marker} exists)"
        return rows

    # ---- faults -------------------------------------------------------------------------------------------
    def faults(self) -> None:
        """Version 2 of both models; each stage is killed part-way, every artifact left must load, then it reruns."""
        self.set_version(2)
        base = self.report["setup_stage_seconds"]
        rows = []
        for st in STAGES:
            delay = float(base[st]) * float(self.rng.uniform(0.3, 0.7))
            cmd = python_module("edgeattn", st, "--models", ",".join(MODELS), "--artifacts", self.art,
                                *(["--force"] if st == "verify" else []))
            p = subprocess.Popen(cmd, env={**os.environ, **self.env()}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(delay)
            still_running = p.poll() is None
            if still_running:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            broken = []
            for model in MODELS:
                for f in ONNX_FILES:
                    path = self.folder(model) / f
                    if path.is_file():  # each opened as a user would, in a fresh process
                        res = run_child(python_module("runtime", path, "--info"), 300, env=self.env())
                        if not res.ok:
                            broken.append(f"{path.parent.name}/{f}: {res.describe(tail_lines=1)[:200]}")
            rerun = self.stage(st, *(["--force"] if st == "verify" else []))
            rows.append({"stage": st, "killed_after_s": round(delay, 2), "killed_mid_run": still_running,
                         "unloadable_after_kill": broken, "rerun": rerun.describe(tail_lines=2)[:300],
                         "survived": rerun.ok and not broken})
        final = self.stage("verify", "--force", "--strict")
        rows_v = [r for r in (read_json(self.art / "verify.json", []) or []) if r.get("gating", True)]
        leftovers = sorted(str(p.relative_to(self.art)) for p in self.art.rglob(".*.tmp"))
        stale = self._stale_files()
        self.report["faults"] = {
            "stages": rows, "tried": len(rows), "survived": sum(r["survived"] for r in rows),
            "final_verify": {"ok": final.ok, "gating_rows": len(rows_v), "passed": sum(bool(r.get("passed")) for r in rows_v)},
            "stale_or_mismatched_files": stale, "leftover_temp_files": leftovers}
        self.report["faults"]["crashing_workers"] = self._crashing_workers()

    def _stale_files(self) -> list[str]:
        """Files whose bytes differ from the sha256 their manifest section records."""
        out = []
        for model in MODELS:
            man = read_json(self.folder(model) / "manifest.json", {}) or {}
            for sec in man.values():
                for f, sha in ((sec or {}).get("files_sha256") or {}).items() if isinstance(sec, dict) else []:
                    p = self.folder(model) / f
                    if p.is_file() and sha256_file(p) != sha:
                        out.append(f"{p.parent.name}/{f}")
            exp = man.get("export") or {}
            p = self.folder(model) / str(exp.get("file", "fp32.onnx"))
            if exp.get("sha256") and p.is_file() and sha256_file(p) != exp["sha256"]:
                out.append(f"{p.parent.name}/{p.name}")
        return out

    def _crashing_workers(self) -> dict[str, Any]:
        """A worker that dies (SIGSEGV) on one artifact: verify and bench record a failed row and go on."""
        crash = {"EDGEATTN_FAULT_CRASH": "fp16.onnx"}
        model = MODELS[1]
        out: dict[str, Any] = {}
        res = run_child(python_module("edgeattn", "verify", "--models", model, "--artifacts", self.art, "--force"),
                        900, env=self.env(**crash))
        rows = [r for r in (read_json(self.art / "verify.json", []) or []) if r.get("model") == model]
        hit = [r for r in rows if r.get("artifact") == "fp16.onnx"]
        others = [r for r in rows if r.get("artifact") != "fp16.onnx" and r.get("gating", True)]
        out["verify"] = {"returncode": res.returncode, "crashed_rows": len(hit),
                         "crashed_rows_failed": all(not r.get("passed") and "SIGSEGV" in str(r.get("error")) for r in hit),
                         "other_rows_passed": all(r.get("passed") for r in others) and bool(others)}
        out["verify"]["ok"] = bool(hit) and out["verify"]["crashed_rows_failed"] and out["verify"]["other_rows_passed"]
        res = run_child(python_module("edgeattn", "bench", "--models", model, "--artifacts", self.art, "--quick",
                                      "--batches", "1", "--peers", "", "--no-plots", "--force"), 900,
                        env=self.env(**crash))
        brows = (read_json(self.art / "bench.json", {}) or {}).get("rows", [])
        bhit = [r for r in brows if r.get("artifact") == "fp16.onnx"]
        out["bench"] = {"returncode": res.returncode, "crashed_rows": len(bhit),
                        "errors": sorted({str(r.get("error"))[:120] for r in bhit}),
                        "ok": res.returncode == 0 and bool(bhit) and all(r.get("error") for r in bhit)}
        run_child(python_module("edgeattn", "verify", "--models", model, "--artifacts", self.art, "--force"), 900,
                  env=self.env())  # leave verify.json true
        return out

    # ---- memory -------------------------------------------------------------------------------------------
    def memory(self) -> None:
        rows = {}
        for be in ["onnxruntime"] + (["openvino"] if openvino_available() else []):
            for model in MODELS:
                out = self.work / f"mem-{be}-{self.folder(model).name}.json"
                res = run_child(python_module("devtools.harden_memory", "--path", self.folder(model) / "fp32.sim.onnx",
                                              "--backend", be, "--requests", self.requests, "--out", out), 1800,
                                env=self.env())
                rows[f"{self.folder(model).name} {be}"] = json.loads(out.read_text()) if res.ok else \
                    {"error": res.describe(tail_lines=2)}
        self.report["memory"] = rows

    # ---- the served endpoint -----------------------------------------------------------------------------------
    def served(self) -> None:
        from PIL import Image

        from devtools.harden_serve import served_suite

        img = self.work / "served-good.png"
        Image.fromarray((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)).save(img)
        self.report["served"] = served_suite(self.art, MODELS, self.env(), max(20, self.examples // 3),
                                             self.requests, img, run_child, python_module)

    # ---- verdict and report --------------------------------------------------------------------------------
    def verdict(self) -> list[str]:
        problems = []
        for k, v in self.report.get("bad_input", {}).items():
            if k == "cli":
                problems += [f"cli '{r['case']}': exit {r['returncode']}, expected {r['expected']}"
                             for r in v["cases"] if not r["ok"]]
            elif v.get("crashed"):
                problems.append(f"{k}: the fuzz child {v['crashed']}")
            else:
                for what in ("untyped_error", "accepted_bad", "refused_good"):
                    if v.get(what):
                        problems.append(f"{k}: {v[what]} {what.replace('_', ' ')}")
        t = self.report.get("tampering", {})
        problems += [f"tampering '{r['case']}' not refused: {r['error']}" for r in t.get("cases", []) if not r["refused"]]
        f = self.report.get("faults", {})
        problems += [f"fault in {r['stage']}: {r['rerun']} {r['unloadable_after_kill']}" for r in f.get("stages", [])
                     if not r["survived"]]
        if f and not f["final_verify"]["ok"]:
            problems.append(f"after the faults, verify --strict failed ({f['final_verify']})")
        if f.get("stale_or_mismatched_files"):
            problems.append(f"stale files: {f['stale_or_mismatched_files']}")
        for k, v in (f.get("crashing_workers") or {}).items():
            if not v.get("ok"):
                problems.append(f"a crashing {k} worker was not recorded as a failed row: {v}")
        sv = self.report.get("served")
        if sv is not None:
            if sv.get("skipped") or sv.get("error"):
                problems.append(f"served endpoint not checked: {sv.get('skipped') or sv.get('error')}")
            else:
                br = sv["bad_requests"]
                for what in ("server_error", "accepted_bad", "refused_good", "hung_or_dropped"):
                    if br.get(what):
                        problems.append(f"served: {br[what]} request(s) {what.replace('_', ' ')}: {br['surprises'][:2]}")
                if not sv["still_serving_after_bad_requests"]:
                    problems.append("served: the server stopped answering good requests after the bad ones")
                if not sv["killed_while_loading"]["ok"]:
                    problems.append(f"served: a model killed while loading: {sv['killed_while_loading']}")
                for e, m in sv["memory"].items():
                    if m["growth_mb_per_10k"] > MEMORY_LIMIT_MB_PER_10K:
                        problems.append(f"served memory {e}: {m['growth_mb_per_10k']:.1f} MB per 10k requests")
        for k, v in self.report.get("memory", {}).items():
            if v.get("error"):
                problems.append(f"memory {k}: {v['error']}")
            elif v["growth_mb_per_10k"] > MEMORY_LIMIT_MB_PER_10K:
                problems.append(f"memory {k}: RSS grows {v['growth_mb_per_10k']:.1f} MB per 10k requests "
                                f"(> {MEMORY_LIMIT_MB_PER_10K})")
        return problems


MEMORY_LIMIT_MB_PER_10K = 5.0


def write_markdown(rep: dict[str, Any], path: Path) -> None:
    m = rep["machine"]
    lines = ["# Hardening suite", "", f"Machine: {m.get('model')} ({m.get('int8_isa')}), {m.get('physical_cores', '?')} cores. "
             f"{rep['examples']} hypothesis examples per subject, {rep['requests']} requests per memory run.", "",
             f"**Verdict: {'all as wanted' if not rep['problems'] else str(len(rep['problems'])) + ' problem(s)'}**", ""]
    lines += [f"- {p}" for p in rep["problems"]]
    lines += ["", "## Bad input", "", "| subject | tried | accepted (good) | typed errors | untyped errors | bad accepted | "
              "good refused |", "|---|---|---|---|---|---|---|"]
    for k, v in rep.get("bad_input", {}).items():
        if k == "cli":
            continue
        if v.get("crashed"):
            lines.append(f"| {k} | - | crashed: {v['crashed']} | | | | |")
            continue
        lines.append(f"| {k} | {v['tried']} | {v['accepted']} | {v['typed_error']} | {v['untyped_error']} | "
                     f"{v['accepted_bad']} | {v['refused_good']} |")
    cli_rows = rep.get("bad_input", {}).get("cli", {})
    if cli_rows:
        lines += ["", f"CLI: {cli_rows['ok']}/{cli_rows['tried']} invocations as wanted.", "",
                  "| case | exit | wanted | first error line |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['returncode']} | {r['expected'] if r['expected'] is not None else '0 or 2'} | "
                  f"{(r['error_line'] or '').replace('|', '/')[:140]} |" for r in cli_rows["cases"]]
    t = rep.get("tampering")
    if t:
        lines += ["", "## Tampering", "", f"{t['refused']}/{t['tried']} as wanted.", "", "| case | as wanted | error |",
                  "|---|---|---|"]
        lines += [f"| {r['case']} | {'yes' if r['refused'] else 'NO'} | {(r.get('skipped') or r['error'] or '')[:160]} |"
                  for r in t["cases"]]
    f = rep.get("faults")
    if f:
        lines += ["", "## Faults (SIGKILL part-way through a rebuild, then rerun)", "",
                  "| stage | killed after s | mid-run | unloadable after kill | rerun | survived |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['killed_after_s']} | {r['killed_mid_run']} | {len(r['unloadable_after_kill'])} | "
                  f"{r['rerun'][:60]} | {'yes' if r['survived'] else 'NO'} |" for r in f["stages"]]
        fv = f["final_verify"]
        lines += ["", f"Then `verify --force --strict` against the changed models: {fv['passed']}/{fv['gating_rows']} "
                  f"gating rows passed. Files differing from their manifest's sha256: {f['stale_or_mismatched_files'] or 'none'}. "
                  f"Temp files left by the kills (hidden `.*.tmp`, never loaded): {len(f['leftover_temp_files'])}."]
        for k, v in (f.get("crashing_workers") or {}).items():
            lines.append(f"- A {k} worker that dies with SIGSEGV on fp16.onnx: {'recorded as failed rows, the run went on' if v.get('ok') else 'NOT handled: ' + json.dumps(v)[:200]}")
    sv = rep.get("served")
    if sv:
        lines += ["", "## The served endpoint (bundled Triton server, Python-backend entries, 127.0.0.1)", ""]
        if sv.get("skipped") or sv.get("error"):
            lines.append(f"Not checked: {sv.get('skipped') or sv.get('error')}")
        else:
            br = sv["bad_requests"]
            lines += [f"Requests: {br['tried']} (hypothesis-drawn); good ones answered {br['answered']}, bad ones refused "
                      f"with HTTP 4xx {br['client_error']}, 5xx {br['server_error']}, bad accepted {br['accepted_bad']}, "
                      f"good refused {br['refused_good']}, hung or dropped {br['hung_or_dropped']}; bodies that are not "
                      f"JSON: HTTP 500 from Triton's own front end {br.get('core_parse_500', 0)} (before any model; "
                      "reported, not counted). Still serving good "
                      f"requests correctly afterwards: {sv['still_serving_after_bad_requests']}.", "",
                      "| kind | outcomes |", "|---|---|"]
            lines += [f"| {k} | {', '.join(f'{o} {n}' for o, n in v.items())} |" for k, v in br["by_kind"].items()]
            kl = sv["killed_while_loading"]
            lines += ["", f"A model's stub SIGKILLed while it loaded ({kl['stubs_killed']} killed): the server stayed up "
                      f"{kl['server_alive']}, the other model still served correctly {kl['other_still_serves']}; the "
                      f"load request answered `{kl['load_result'][:100]}`, the failure reported {kl['reported']}, the "
                      f"model recovered {kl['recovered']}.", "",
                      "| entry | requests | server RSS after warm-up MB | after MB | growth MB per 10k | req/s |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {e} | {m['requests']} | {m['rss_warm_mb']} | {m['rss_end_mb']} | {m['growth_mb_per_10k']} | "
                      f"{m['requests_per_s']} |" for e, m in sv["memory"].items()]
    mem = rep.get("memory")
    if mem:
        lines += ["", "## Memory (resident set size after warm-up)", "",
                  "| model, backend | requests | RSS after warm-up MB | RSS after MB | growth MB per 10k |", "|---|---|---|---|---|"]
        for k, v in mem.items():
            lines.append(f"| {k} | {v.get('requests', '-')} | {v.get('rss_warm_mb', '-')} | {v.get('rss_end_mb', '-')} | "
                         f"{v.get('growth_mb_per_10k', v.get('error'))} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--examples", type=int, default=300, help="hypothesis examples per fuzzed subject")
    ap.add_argument("--requests", type=int, default=10_000, help="requests per memory run")
    ap.add_argument("--quick", action="store_true", help="CI size: 40 examples, 2,000 requests")
    ap.add_argument("--only", default="bad_input,tampering,faults,memory,served", help="comma-separated parts")
    args = ap.parse_args(argv)
    if args.quick:
        args.examples, args.requests = min(args.examples, 40), min(args.requests, 2000)
    suite = Suite(args.artifacts, args.examples, args.requests)
    t0 = time.perf_counter()
    print("harden: building the two subject models (export .. verify)", flush=True)
    suite.setup()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    for part in ("bad_input", "tampering", "memory", "served", "faults"):
        if part in parts:
            print(f"harden: {part.replace('_', ' ')} ...", flush=True)
            t = time.perf_counter()
            getattr(suite, {"bad_input": "bad_inputs"}.get(part, part))()
            print(f"harden: {part.replace('_', ' ')} done in {time.perf_counter() - t:.0f} s", flush=True)
    suite.report["problems"] = suite.verdict()
    suite.report["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(args.artifacts / "harden.json", suite.report)
    write_markdown(suite.report, args.artifacts / "harden.md")
    n = len(suite.report["problems"])
    print(f"harden: {'all as wanted' if not n else f'{n} problem(s)'} in {suite.report['seconds']} s -> "
          f"{args.artifacts / 'harden.json'}, {args.artifacts / 'harden.md'}")
    for p in suite.report["problems"]:
        print(f"  - {p}")
    return 1 if n else 0


if __name__ == "__main__":
    raise SystemExit(cli("harden", main))
