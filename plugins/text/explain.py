"""Token attributions for the text tasks: captum ``LayerIntegratedGradients`` on the model's
input embeddings (:meth:`ModelBuilder.explain_layer`).

The baseline keeps the special tokens of each input (``[CLS]``, ``[SEP]``) and replaces every
other token by the tokenizer's pad token; the target is the predicted class (the top predicted
label, multi-label; the first target, regression) unless ``ExplainOptions.target`` names one.
Attributions are summed over the hidden dimension: their sum is the target logit at the input
minus at the baseline, up to the reported convergence delta. Word pieces are merged for display
(their attributions added) and shaded green (towards the target) or red (against).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tuneforge.components import ExplainOptions, Explanation
from tuneforge.errors import UserError
from tuneforge.explain import esc, model_device, model_outputs, output_name

#: Word-start markers of byte-level BPE (GPT-2, RoBERTa) and sentencepiece tokenizers.
_WORD_START = ("Ġ", "▁")


def merge_pieces(tokens: list[str], scores: np.ndarray, special: list[bool]) -> list[tuple]:
    """``(word, attribution, is_special)`` per word: word pieces (``##x`` after a WordPiece
    token, or a BPE token without a word-start marker) join the word before them, with
    their attributions added; special tokens stay alone."""
    bpe = any(t.startswith(_WORD_START) for t, s in zip(tokens, special, strict=True) if not s)
    words: list[list[Any]] = []
    for tok, score, spec in zip(tokens, scores, special, strict=True):
        joins = (
            not spec
            and words
            and not words[-1][2]
            and (tok.startswith("##") or (bpe and not tok.startswith(_WORD_START)))
        )
        shown = tok[2:] if tok.startswith("##") else tok.lstrip("".join(_WORD_START))
        if joins:
            words[-1][0] += shown
            words[-1][1] += float(score)
        else:
            words.append([shown if not spec else tok, float(score), spec])
    return [tuple(w) for w in words]


def _colour(value: float) -> str:
    """Green for a positive (normalised) attribution, red for a negative one."""
    alpha = min(1.0, abs(value)) * 0.85
    rgb = "22,160,60" if value >= 0 else "215,40,40"
    return f"background: rgba({rgb},{alpha:.3f})"


def explain_text(
    task: Any, model: Any, frame: pd.DataFrame, data_config: Any, options: ExplainOptions
) -> Explanation:
    """Integrated Gradients token attributions of the first ``options.rows`` rows of
    ``frame`` (see the module docstring)."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from tuneforge.trainer import _logits

    layer = task.model_builder.explain_layer(model)
    if layer is None:
        raise UserError(
            f"model {task.model_builder.__class__.__name__} names no embedding layer to "
            f"attribute to: task {task.name} cannot explain it"
        )
    tok = task.tokenizer.tokenizer  # the transformers tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.unk_token_id or 0)
    # kept in the baseline: the sequence markers ([CLS], [SEP]; <s>, </s>), not [UNK] or [MASK]
    markers = (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id)
    specials = {t for t in markers if t is not None} - {pad}
    shown = frame.iloc[: max(0, options.rows)]
    # the page shows the tokens the model saw (truncated ones included): no stderr count
    dataset = task.predict_dataset(shown, data_config, report_truncation=False)
    collate = task.collate_fn(False)
    device = model_device(model)
    logits = model_outputs(model, dataset, collate)
    names: list[str] = []

    def forward(input_ids: Any, *extra: Any) -> Any:
        kwargs = dict(zip(names, extra, strict=True))
        return _logits(model(input_ids=input_ids, **kwargs)).float()

    ig = LayerIntegratedGradients(forward, layer)
    records, parts = [], []
    for i in range(len(dataset)):
        batch = {k: v.to(device) for k, v in collate([dataset[i]]).items() if k != "labels"}
        ids = batch.pop("input_ids")
        names[:] = list(batch)
        extra = tuple(batch[n] for n in names)
        row_logits = logits[i]
        if options.target is not None:
            target = int(options.target)
        elif task.problem == "regression":
            target = 0
        else:  # the predicted class; multi-label: the top label (sigmoid keeps the order)
            target = int(torch.argmax(row_logits))
        if not 0 <= target < row_logits.numel():
            raise UserError(f"--target {target}: the model has {row_logits.numel()} outputs")
        keep = torch.tensor([[int(t) in specials for t in ids[0].tolist()]], device=device)
        baseline = torch.where(keep, ids, torch.full_like(ids, pad))
        attr, delta = ig.attribute(
            ids,
            baselines=baseline,
            additional_forward_args=extra,
            target=target,
            n_steps=options.steps,
            internal_batch_size=options.internal_batch_size,
            return_convergence_delta=True,
        )
        scores = attr.sum(dim=-1)[0].detach().float().cpu().numpy()
        with torch.no_grad():
            f_x = float(forward(ids, *extra)[0, target])
            f_b = float(forward(baseline, *extra)[0, target])
        norm = float(np.linalg.norm(scores)) or 1.0
        tokens = tok.convert_ids_to_tokens(ids[0].tolist())
        pairs = zip(keep[0].tolist(), ids[0].tolist(), strict=True)
        special = [bool(k) or int(t) == pad for k, t in pairs]
        words = merge_pieces(tokens, scores / norm, special)
        label = output_name(options.labels, target)
        record = {
            "row": int(shown.index[i]) if i < len(shown.index) else i,
            "target": target,
            "target_name": label,
            "output": f_x,
            "baseline_output": f_b,
            "attribution_sum": float(scores.sum()),
            "delta": float(delta.abs().max()),
            "tokens": tokens,
            "attributions": scores,
            "words": [(w, s) for w, s, _ in words],
        }
        records.append(record)
        spans = "".join(
            f'<span style="{_colour(s)}" title="{s:+.3f}">{esc(w)}</span>'
            if not sp
            else f'<span class=muted title="{s:+.3f}">{esc(w)}</span>'
            for w, s, sp in words
        )
        what = "value" if task.problem == "regression" else "logit"
        parts.append(
            f"<h3>row {record['row']}: {esc(label)}</h3><p class=muted>{what} "
            f"{f_x:.4f} (baseline {f_b:.4f}); attributions sum to "
            f"{record['attribution_sum']:.4f}; convergence delta {record['delta']:.2e}</p>"
            f"<div class=tokens>{spans}</div>"
        )
    legend = (
        "<p class=legend><span style='background: rgba(22,160,60,.7)'>towards the output</span> "
        "<span style='background: rgba(215,40,40,.7)'>against it</span> <span class=muted>"
        "Integrated Gradients on the input embeddings, baseline: the special tokens with pad "
        f"tokens between them, {options.steps} steps; shading: each row's attributions over "
        "their L2 norm; pieces of a word merged.</span></p>"
    )
    deltas = [r["delta"] for r in records]
    return Explanation(
        method="integrated-gradients",
        html=legend + "".join(parts),
        records=records,
        summary={
            "rows": len(records),
            "steps": options.steps,
            "largest convergence delta": max(deltas) if deltas else 0.0,
        },
    )
