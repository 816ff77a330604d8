"""Spike: lm-eval's Python API over the toy tasks, offline, hf or vllm backend.

python run_eval.py hf|vllm MODEL_DIR [--chat] [--limit N] [--tasks a,b]
"""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import argparse, json, sys, time
import importlib.metadata as _md

# lm-eval's vllm backend calls importlib.metadata.version("vllm") at import; vllm-cpu's distribution is named
# "vllm-cpu", so that raises PackageNotFoundError. Answer as vllm itself does (vllm.platforms: "<vllm-cpu version>+cpu").
_orig_version = _md.version


def _version(name):
    try:
        return _orig_version(name)
    except _md.PackageNotFoundError:
        if name == "vllm":
            return _orig_version("vllm-cpu") + "+cpu"  # vllm's own fallback: its CPU platform check looks for "cpu"
        raise


_md.version = _version


def main():
    p = argparse.ArgumentParser()
    p.add_argument("backend", choices=["hf", "vllm"])
    p.add_argument("model")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--tasks", default="toy_arith,toy_pairs,toy_arith_mc")
    p.add_argument("--out", default=None)
    p.add_argument("--uni", action="store_true", help="vllm: distributed_executor_backend=uni (no Worker process)")
    p.add_argument("--add-bos", action="store_true", help="add_bos_token=True (doubles BOS in loglikelihood_rolling)")
    a = p.parse_args()
    t0 = time.time()
    import lm_eval
    from lm_eval.tasks import TaskManager
    t_import = time.time() - t0
    max_len = json.load(open(os.path.join(a.model, "config.json")))["max_position_embeddings"]
    if a.backend == "hf":
        model_args = {"pretrained": a.model, "dtype": "float32", "device": "cpu",
                      "max_length": max_len}
        batch_size = 8
    else:
        model_args = {"pretrained": a.model, "dtype": "float32", "enforce_eager": True, "max_model_len": max_len}
        batch_size = "auto"
    if a.add_bos:
        model_args["add_bos_token"] = True
    if a.uni:
        model_args["distributed_executor_backend"] = "uni"
    tm = TaskManager(include_path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks"),
                     include_defaults=False)  # skips indexing lm-eval's ~14k built-in tasks (about 6 s)
    t1 = time.time()
    from lm_eval.api.registry import get_model
    lm = get_model(a.backend).create_from_arg_obj(model_args, {"batch_size": batch_size})
    t2 = time.time()
    res = lm_eval.simple_evaluate(model=lm, tasks=a.tasks.split(","), task_manager=tm, limit=(a.limit or None),
                                  apply_chat_template=a.chat, log_samples=True, random_seed=0)
    t3 = time.time()
    if a.backend == "vllm":
        core = lm.model.llm_engine.engine_core
        core.shutdown(timeout=1) if hasattr(core, "resources") else core.shutdown()
    t4 = time.time()
    print(f"phases: import {t_import:.1f} s, TaskManager {t1 - t0 - t_import:.1f} s, model/engine start {t2 - t1:.1f} s, "
          f"simple_evaluate {t3 - t2:.1f} s, shutdown {t4 - t3:.1f} s, total {t4 - t0:.1f} s")
    print("top-level keys:", sorted(res.keys()))
    print(json.dumps(res["results"], indent=1, default=str))
    for task, samples in res["samples"].items():
        s = samples[0]
        print(task, "sample keys:", sorted(s.keys()))
        print("  arguments:", repr(s["arguments"])[:300])
        print("  resps:", repr(s["resps"])[:300], "filtered:", repr(s["filtered_resps"])[:200], "target:", repr(s["target"])[:80])
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
