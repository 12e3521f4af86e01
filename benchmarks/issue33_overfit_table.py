"""Issue 33, the overfit regime over two seeds (benchmarks/RESULTS.md): accuracy and losses of
both seeds (seed 0: five methods in results/issue33-cpu/overfit, run on a busy machine, three in
overfit-quiet; seed 1: all eight in overfit-quiet), times from seed 1 alone (one quiet batch,
ratios to its own baseline).

    python benchmarks/issue33_overfit_table.py
"""
import json
import statistics
from pathlib import Path
R = Path(__file__).resolve().parent / "results" / "issue33-cpu"
seed0 = {**{p.name[:-3]: p for p in (R / "overfit").iterdir()},
         **{p.name[:-3]: p for p in (R / "overfit-quiet").iterdir() if p.name.endswith("-s0") and p.name != "baseline-s0"}}
seed1 = {p.name[:-3]: p for p in (R / "overfit-quiet").iterdir() if p.name.endswith("-s1")}
order = ["baseline", "dbsl-n3", "hybrid-n3", "swa", "local-sgd", "dbsl-n3-swa", "plain", "ddp-like"]
def last(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    evals = [r for r in recs if isinstance(r.get("test_acc"), (int, float))]
    return evals[-1], max(r["test_acc"] for r in evals), recs
def ms(v):
    return f"{statistics.mean(v)*100:.2f} ± {statistics.stdev(v)*100:.2f}" if len(v) > 1 else f"{v[0]*100:.2f}"
def wall(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in recs if "wall_time" in r][-1]["wall_time"]
bt = wall(seed1["baseline"])
print("| method | seeds | final acc % | best acc % | train loss | test loss | time, seed 1 (s) | time / baseline |")
print("|---|---|---|---|---|---|---|---|")
for m in order:
    runs = [d[m] for d in (seed0, seed1) if m in d]
    lasts = [last(r) for r in runs]
    fin = [l[0]["test_acc"] for l in lasts]; best = [l[1] for l in lasts]
    tl = statistics.mean(l[0]["train_loss"] for l in lasts); te = statistics.mean(l[0]["test_loss"] for l in lasts)
    t = wall(seed1[m]) if m in seed1 else None
    print(f"| {m.replace('-n3', ':3').replace('dbsl:3-swa', 'dbsl:3+swa')} | {len(runs)} | {ms(fin)} | {ms(best)} | {tl:.3f} | {te:.3f} | "
          f"{t:.0f} | {t / bt:.2f} |" if t else f"| {m} | {len(runs)} | {ms(fin)} | {ms(best)} | {tl:.3f} | {te:.3f} | - | - |")
