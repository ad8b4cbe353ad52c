"""Memory of training on token shards: does a 100x larger shard set cost more RSS? (It should
not: the shards are memory-mapped and a batch reads only its windows.)

For each size (default ~10 MB and ~1 GB of uint16 tokens) the script writes a shard set under a
temporary folder in /tmp (random ids written in chunks of 4M tokens through
`nestdsl.data.shards.ShardWriter`, 100M-token shards, a valid `shards.json`), then in a fresh
subprocess builds the `shards` task on it and draws `--steps` batches of `--batch` x `--seq`
(optionally with a tiny model forward, `--forward`), and reports the child's

* `rss_import_mb`: resident memory after importing torch and nestdsl (before the task);
* `peak_rss_mb`: `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end;
* `rss_mb`, `rss_anon_mb`, `rss_file_mb`: resident memory at the end (`/proc/self/status`
  VmRSS), and its two parts: anonymous memory (the process's own) and mapped file pages;
* `seconds`, `batches_per_s`.

Each set runs twice: `cold`, where the child first drops the set's files from the page cache
(`posix_fadvise(DONTNEED)` on those files only: a corpus on disk that nobody has read yet), and
`hot`, right after writing it (its pages still cached). Mapped file pages count in RSS: when the
file is already cached in large folios, the kernel maps a whole cached folio at each window's
page fault, so `hot` RSS grows with the touched part of the file although those pages are clean,
shared and reclaimable page cache; `rss_anon_mb` is the memory that would be a leak, and it does
not move. The record holds the ratios large/small (≈ 1 when memory does not grow with the
corpus). The folders are deleted afterwards.

    python benchmarks/data_shards_rss.py --out benchmarks/results/data-shards-rss-cpu-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 4 << 20          # tokens per write
VOCAB = 50257


def write_set(folder: Path, n_tokens: int, *, seed: int = 0, shard_tokens: int = 100_000_000) -> dict[str, Any]:
    """A shard set of ``n_tokens`` random uint16 ids (a val split of 1%), written in chunks."""
    import numpy as np

    from nestdsl.data.shards import ShardWriter, Sidecar, SplitInfo, write_sidecar

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    splits = {}
    for split, n in (("train", n_tokens - n_tokens // 100), ("val", n_tokens // 100)):
        w = ShardWriter(folder, split, np.uint16, shard_tokens)
        left = n
        while left:
            k = min(CHUNK, left)
            w.write(rng.integers(0, VOCAB, size=k, dtype=np.uint16))
            left -= k
        splits[split] = SplitInfo(documents=0, source_bytes=None, tokens=n, shards=w.close())
    write_sidecar(folder, Sidecar(dtype="uint16", vocab_size=VOCAB, tokenizer={"kind": "random"},
                                  separator={"kind": "none", "ids": []},
                                  source={"kind": "random", "seed": seed}, splits=splits,
                                  val_fraction=0.01, shard_tokens=shard_tokens,
                                  created_by="benchmarks/data_shards_rss.py"))
    size = sum(f.stat().st_size for f in folder.glob("*.bin"))
    return {"tokens": n_tokens, "bytes": size, "shards": sum(len(s.shards) for s in splits.values()),
            "write_s": round(time.perf_counter() - t0, 2)}


def _status_mb() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process in MB (Linux /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _evict(folder: Path) -> None:
    """Drop this set's files (only them) from the page cache."""
    for f in folder.glob("*.bin"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(folder: str, steps: int, batch: int, seq: int, forward: bool, cold: bool) -> dict[str, Any]:
    """Draw ``steps`` batches from the set (in this process) and measure its memory."""
    import torch

    from nestdsl.runtime.tasks.shards import ShardTask

    torch.set_num_threads(1)
    if cold:
        _evict(Path(folder))
    rss_import = _status_mb()["VmRSS"]
    task = ShardTask(folder, seq_len=seq, batch=batch, seed=0)
    model = None
    if forward:
        model = torch.nn.Sequential(torch.nn.Embedding(task.vocab_size, 16), torch.nn.Linear(16, 16))
    t0 = time.perf_counter()
    checksum = 0
    for step in range(steps):
        b = task.batch(step)
        checksum += int(b.tokens[:, 0].sum())
        if model is not None:
            with torch.no_grad():
                model(b.tokens).sum()
    seconds = time.perf_counter() - t0
    now = _status_mb()
    return {"rss_import_mb": round(rss_import, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mb": round(now["VmRSS"], 1), "rss_anon_mb": round(now["RssAnon"], 1),
            "rss_file_mb": round(now["RssFile"], 1), "seconds": round(seconds, 2),
            "batches_per_s": round(steps / seconds, 1), "checksum": checksum}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 1000],
                    help="shard set sizes in MB of uint16 tokens (2 bytes each)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--forward", action="store_true", help="also run a tiny model on each batch")
    ap.add_argument("--tmp", default="/tmp", help="where the temporary shard sets are written")
    ap.add_argument("--out")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(child(args.one, args.steps, args.batch, args.seq, args.forward, args.cold)))
        return

    records: list[dict[str, Any]] = []
    for mb in args.sizes_mb:
        tmp = Path(tempfile.mkdtemp(prefix="nestdsl-shards-rss-", dir=args.tmp))
        try:
            written = write_set(tmp / "set", int(mb * 2**20 / 2))
            for cache in ("hot", "cold"):
                rec: dict[str, Any] = {"size_mb": mb, "cache": cache, **written}
                cmd = [sys.executable, __file__, "--one", str(tmp / "set"), "--steps", str(args.steps),
                       "--batch", str(args.batch), "--seq", str(args.seq)]
                cmd += (["--forward"] if args.forward else []) + (["--cold"] if cache == "cold" else [])
                p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                rec.update(json.loads(lines[-1]) if lines else {"error": p.stderr[-2000:]})
                records.append(rec)
                print(f"{mb:>8.0f} MB {cache:<4}  {rec.get('shards')} shards  peak RSS "
                      f"{rec.get('peak_rss_mb')} MB  RSS {rec.get('rss_mb')} MB (anon "
                      f"{rec.get('rss_anon_mb')}, file {rec.get('rss_file_mb')}; after imports "
                      f"{rec.get('rss_import_mb')})  {rec.get('batches_per_s')} batches/s",
                      file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {
        "benchmark": "data_shards_rss",
        "what": "memory of the shards task drawing batches from a small and a 100x larger shard "
                "set: peak and current RSS, its anonymous and file-mapped parts, with the set's "
                "pages out of the page cache (cold) and still in it (hot)",
        "command": "python benchmarks/data_shards_rss.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "args": {k: v for k, v in vars(args).items() if k not in ("one", "cold", "out", "tmp")},
        "records": records,
    }
    for cache in ("cold", "hot"):
        ok = [r for r in records if "error" not in r and r["cache"] == cache]
        if len(ok) >= 2:
            small, large = ok[0], ok[-1]
            out.setdefault("ratio", {})[cache] = {
                "data": round(large["bytes"] / small["bytes"], 1),
                **{k.removesuffix("_mb"): round(large[k] / small[k], 3)
                   for k in ("peak_rss_mb", "rss_mb", "rss_anon_mb")}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
