"""Files of a ``bertsilicon peers`` run: ``peers[-quick][-TAG].json`` (everything), ``.md`` (the target table and
one table per batch with every column), and the latency / speed-up plots of ``report.plots``."""
from __future__ import annotations

from . import report


def stem(result) -> str:
    name = "peers-quick" if result.get("quick") else "peers"
    return f"{name}-{result['tag']}" if result.get("tag") else name


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _targets(result) -> list[str]:
    lines = ["| batch | fastest peer int8 | its quality ratio | bertsilicon int8 / peer latency | target | verdict "
             "| bertsilicon int8 quality ratio | target | verdict |", "|---:|---|---:|---:|---:|---|---:|---:|---|"]
    for t in result["peer_targets"]:
        lines.append("| " + " | ".join([
            str(t["batch"]), t["peer"] or "-", _num(t.get("peer_quality_ratio"), ".4%"), _num(t["ratio"], ".3f"),
            f"<= {t['limit']:.1f}", t["latency_verdict"], _num(t["quality_ratio"], ".4%"),
            f">= {t['quality_target']:.1%}", t["quality_verdict"]]) + " |")
    return lines


def _cold(row) -> tuple[str, str]:
    c = row.get("cold_start")
    if not c:
        return "-", "-"
    if "error" in c:
        return "failed: " + c["error"].replace("|", "/")[:80], "-"
    return f"{c['total_s']:.2f} ({c['import_s']:.1f} + {c['ready_s']:.2f} + {c['first_s']:.3f})", f"{c['peak_rss_mib']:.0f}"


def _batch_table(result, batch) -> list[str]:
    rows = [r for r in result["rows"] if r["batch"] == batch]
    first = rows[0]
    out = [f"### batch {batch} ({first['padded_shape'][0]}x{first['padded_shape'][1]} padded, {first['real_tokens']} "
           "real tokens)", "",
           "| provider | precision | latency ms median [min-max] | x torch-sdpa fp32 | cos min | kNN acc | recall@10 "
           "| MRR | quality ratio | max diff in batch | max diff padded 512 | cold start s (import + ready + first) "
           "| peak RSS MiB | status |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lat, q, inv = r["latency_ms"], r.get("quality") or {}, r.get("invariance") or {}
        cold, rss = _cold(r)
        status = report._status(r) + (f"; columns: {r['columns_error']}" if r.get("columns_error") else "")
        out.append("| " + " | ".join([
            r["provider"], r["precision"],
            f"{report._fmt_ms(lat['median'])} [{report._fmt_ms(lat['min'])}-{report._fmt_ms(lat['max'])}]" if lat else "-",
            _num(r["speedup"], ".2f"), _num(r["cos_min"], ".5f"), _num(q.get("knn_accuracy"), ".4f"),
            _num(q.get("recall@10"), ".4f"), _num(q.get("mrr"), ".4f"), _num(r.get("quality_ratio"), ".4%"),
            _num(inv.get("in_batch"), ".2e"), _num(inv.get("padded_512"), ".2e"), cold, rss,
            status.replace("|", "/")]) + " |")
    return out + [""]


def markdown(result) -> str:
    from .columns import __doc__ as columns_doc
    from .coldstart import __doc__ as cold_doc

    ref = next((r.get("quality_reference") for r in result["rows"] if r.get("quality_reference")), None)
    lines = ["# bertsilicon int8 vs the strongest CPU engines" + (" — quick run" if result.get("quick") else ""), ""]
    if result.get("note"):
        lines += [f"> **{result['note']}**", ""]
    lines += report.machine_lines(result)
    lines += [f"- **Command**: `{result.get('env', '')}bertsilicon peers {result.get('argv', '')}`".rstrip(),
              "- **Input**: MiniLM-L6 (all-MiniLM-L6-v2 weights), real text (`bertsilicon.data.corpus('pydoc')`), max "
              "length 128, padding longest; every provider gets the same batch.", ""]
    if ref:
        lines += [f"- **fp32 reference (HF fp32)**: kNN accuracy {ref['knn_accuracy']:.4f}, recall@10 "
                  f"{ref['recall@10']:.4f}, MRR {ref['mrr']:.4f}.", ""]
    lines += ["## Targets", "", "bertsilicon int8 latency / the fastest int8 peer's at the same batch, same run; "
              "quality ratio = score / HF fp32 score, the lowest of kNN accuracy, recall@10 and MRR.", ""]
    lines += _targets(result) + ["", "## Every provider, every column", ""]
    for batch in sorted({r["batch"] for r in result["rows"]}):
        lines += _batch_table(result, batch)
    lines += ["Quality, invariance and cold start do not depend on the batch: the same figures repeat in each table.",
              "", "## Method", "", result["method"], "", "### Columns", "", columns_doc.split("\n", 2)[2].strip(), "",
              "### Cold start", "", cold_doc.split("\n", 2)[2].strip(), "", "## Providers", ""]
    lines += [f"- `{p['name']} {p['precision']}`: {p['description']}" for p in result["providers"]]
    return "\n".join(lines) + "\n"


def write(result, out, plot: bool = True) -> dict:
    """``{"json", "md", "png": [...]}``: the files written into ``out``."""
    return report.write_results(result, out, plot, name=stem(result), render=markdown)
