"""Grad-CAM for the image tasks: captum ``LayerGradCam`` on the model's last convolutional
stage (:meth:`ModelBuilder.explain_layer`), upsampled to the input with
``LayerAttribution.interpolate`` and overlaid as a heatmap on the image (PNG, embedded as a data
URI). The target is the predicted class (the top predicted label, multi-label; the first
target, regression) unless ``ExplainOptions.target`` names one.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd

from tuneforge.components import ExplainOptions, Explanation
from tuneforge.errors import UserError
from tuneforge.explain import esc, model_device, model_outputs, output_name


def _png(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay(picture: Any, cam: np.ndarray, alpha: float = 0.5) -> Any:
    """``cam`` (height x width, any range) as a jet heatmap over the PIL ``picture``."""
    from matplotlib import colormaps
    from PIL import Image

    lo, hi = float(cam.min()), float(cam.max())
    scaled = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    heat = (colormaps["jet"](scaled)[..., :3] * 255).astype(np.uint8)
    base = np.asarray(picture.convert("RGB").resize(heat.shape[1::-1]), dtype=np.float32)
    mixed = (1 - alpha) * base + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def explain_images(
    task: Any, model: Any, frame: pd.DataFrame, data_config: Any, options: ExplainOptions
) -> Explanation:
    """Grad-CAM maps of the first ``options.rows`` images of ``frame`` (see the module
    docstring)."""
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    layer = task.model_builder.explain_layer(model)
    if layer is None:
        raise UserError(
            f"model {task.model_builder.__class__.__name__} names no convolutional layer for "
            f"Grad-CAM: task {task.name} cannot explain it"
        )
    shown = frame.iloc[: max(0, options.rows)]
    dataset = task.predict_dataset(shown, data_config)
    collate = task.collate_fn(False)
    device = model_device(model)
    logits = model_outputs(model, dataset, collate)
    cam_method = LayerGradCam(lambda x: model(pixel_values=x), layer)
    mean = task.tokenizer.data_config.get("mean", (0.5,))
    std = task.tokenizer.data_config.get("std", (0.5,))
    records, parts = [], []
    for i in range(len(dataset)):
        x = collate([dataset[i]])["pixel_values"].to(device)
        if options.target is not None:
            target = int(options.target)
        elif task.problem == "regression":
            target = 0
        else:
            target = int(torch.argmax(logits[i]))
        if not 0 <= target < logits.shape[1]:
            raise UserError(f"--target {target}: the model has {logits.shape[1]} outputs")
        attr = cam_method.attribute(x, target=target, relu_attributions=True)
        if attr.ndim != 4:
            raise UserError(
                f"Grad-CAM needs a channels x height x width feature map; the model's layer "
                f"{type(layer).__name__} gives shape {tuple(attr.shape)} (a vision transformer?)"
            )
        up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        cam = up[0].sum(dim=0).detach().float().cpu().numpy()
        picture = task._picture(x[0], mean, std)
        label = output_name(options.labels, target)
        path = str(shown.iloc[i]["image"]) if "image" in shown.columns else ""
        record = {
            "row": int(shown.index[i]),
            "image": path,
            "target": target,
            "target_name": label,
            "score": float(logits[i, target]),
            "map": cam,
            "feature_map": tuple(attr.shape[-2:]),
        }
        records.append(record)
        panels = task._side_by_side([picture, overlay(picture, cam)])
        parts.append(
            f"<h3>row {record['row']}: {esc(label)}</h3><p class=muted><code>{esc(path)}</code>; "
            f"output {record['score']:.4f}; feature map {attr.shape[-2]}x{attr.shape[-1]}, "
            f"upsampled to {cam.shape[0]}x{cam.shape[1]}</p>"
            f'<img alt="Grad-CAM of row {record["row"]}" src="{_png(panels)}">'
        )
    legend = (
        "<p class=muted>Left: the image as the model sees it (the evaluation transform); "
        "right: Grad-CAM on the model's last convolutional stage (positive evidence for the "
        "output, red highest), upsampled to the input.</p>"
    )
    return Explanation(
        method="grad-cam",
        html=legend + "".join(parts),
        records=records,
        summary={"rows": len(records), "layer": type(layer).__name__},
    )
