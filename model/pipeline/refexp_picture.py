"""A referring-expression picture for people to look at: the expression, the region the model
chose and the gold box, on the image (the pipeline logs it beside the run's other pictures)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from model.downstream.refexp.data import ReferringData  # noqa: E402
from model.downstream.refexp.finetune import ReferringModel, refer  # noqa: E402
from model.pipeline.pictures import DPI, GROUNDING, image_files, save_png, wrap  # noqa: E402
from warehouse.catalog import connect  # noqa: E402

# black and magenta: no shapes colour, so a box never blends into the object it frames
CHOSEN, GOLD = "magenta", "black"


def referring_picture(model: ReferringModel, data: ReferringData, index: int, path,
                      warehouse) -> Path:
    """Expression `index` of `data` as the title over its image, the gold box and the region the
    model chose (with its score and IoU with the gold box) outlined in two colours, with a
    legend. 600 x 600 px."""
    chosen, score = refer(model, data.collate([data[index]]))
    chosen, score = int(chosen[0]), float(score[0])
    row = int(data.image_of[index])
    with connect(warehouse) as con:
        image_id = str(data.images.regions.image_ids[row])
        image = Image.open(image_files(con, [image_id])[0]).convert("RGB")
    w, h = image.size
    fig, ax = plt.subplots(figsize=GROUNDING, dpi=DPI)
    ax.imshow(image)
    iou = float(data.targets[index][chosen])
    boxes = ((data.gold[index], GOLD, "gold box", "--"),
             (data.candidates(row)[chosen, :4], CHOSEN,
              f"chosen region (score {score:.3f}, IoU {iou:.2f})", "-"))
    for (x1, y1, x2, y2), colour, label, style in boxes:
        ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                               edgecolor=colour, linewidth=2.5, linestyle=style, label=label))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.set_title(wrap(f'"{data.expressions[index]}"', 70), fontsize=10)
    ax.axis("off")
    return save_png(fig, path)
