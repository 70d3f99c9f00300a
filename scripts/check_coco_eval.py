"""Randomized COCO box-evaluation cases and their pycocotools numbers (used by check_coco_eval.sh).

  check_coco_eval.py gen DIR SEED          write DIR/gt.json and DIR/dt.json for case SEED
  check_coco_eval.py compare DIR OURS.json evaluate DIR with pycocotools, compare with OURS.json,
                                           print the largest difference of the twelve stats
"""

import json
import math
import random
import sys


def gen(out_dir, seed):
    rng = random.Random(seed)
    n_img = rng.choice([6, 20, 60])
    image_ids = sorted(rng.sample(range(1, 5000), n_img))
    cat_ids = sorted(rng.sample([1, 2, 3, 5, 8, 13, 18, 44, 90], rng.randint(2, 6)))
    # Coarse scores make many ties; fine ones make few.
    digits = rng.choice([1, 2, 6])
    many = seed % 4 == 3  # more than 100 detections per image and category
    ann_id = 0 if seed % 3 == 0 else 1  # pycocotools never matches annotation id 0

    def size():
        # Log-uniform 2..400 px sides, sometimes on the 32 / 96 boundaries exactly.
        if rng.random() < 0.1:
            return float(rng.choice([32, 96]))
        return round(math.exp(rng.uniform(math.log(2), math.log(400))), rng.choice([0, 2]))

    def box():
        w, h = size(), size()
        return [round(rng.uniform(0, 640 - min(w, 600)), 1), round(rng.uniform(0, 480 - min(h, 400)), 1), w, h]

    images, anns, dets = [], [], []
    for img in image_ids:
        images.append({"id": img, "width": 640, "height": 480, "file_name": f"{img:012d}.png"})
        if rng.random() < 0.15:
            continue  # an image without ground truth
        for cat in cat_ids:
            for _ in range(rng.choice([0, 0, 1, 2, 3, 6])):
                b = box()
                crowd = rng.random() < 0.08
                # The area field is the segment's, smaller than the box; sometimes exactly w·h.
                area = b[2] * b[3] * (1.0 if rng.random() < 0.3 else rng.uniform(0.4, 1.0))
                anns.append(
                    {"id": ann_id, "image_id": img, "category_id": cat, "bbox": b, "area": area,
                     "iscrowd": int(crowd), "segmentation": [[b[0], b[1], b[0] + b[2], b[1]]]}
                )
                ann_id += 1

    def score():
        return round(rng.random(), digits)

    def jitter(b, s):
        x, y, w, h = b
        return [round(x + rng.gauss(0, s * w), 2), round(y + rng.gauss(0, s * h), 2),
                round(max(0.0, w * math.exp(rng.gauss(0, s))), 2), round(max(0.0, h * math.exp(rng.gauss(0, s))), 2)]

    for a in anns:
        # Hits of varied quality, duplicates, and misses.
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            s = rng.choice([0.0, 0.02, 0.08, 0.2, 0.5])
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": jitter(a["bbox"], s), "score": score()})
    for img in image_ids:
        if rng.random() < 0.2:
            continue
        for _ in range(rng.randint(0, 8)):
            # False positives, some in a category the ground truth does not have.
            cat = rng.choice(cat_ids + [999])
            dets.append({"image_id": img, "category_id": cat, "bbox": box(), "score": score()})
        if rng.random() < 0.05:
            dets.append({"image_id": img, "category_id": cat_ids[0], "bbox": [5.0, 5.0, 0.0, 7.0],
                         "score": score()})
    if many:
        img = image_ids[0]
        for _ in range(130):
            b = box() if rng.random() < 0.5 else jitter(anns[0]["bbox"], 0.05) if anns else box()
            dets.append({"image_id": img, "category_id": cat_ids[0], "bbox": b, "score": score()})
    if not dets:
        dets.append({"image_id": image_ids[0], "category_id": cat_ids[0], "bbox": box(), "score": 0.5})
    rng.shuffle(dets)
    gt = {"info": {"description": f"randomized case {seed}"}, "images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    json.dump(gt, open(f"{out_dir}/gt.json", "w"))
    json.dump(dets, open(f"{out_dir}/dt.json", "w"))
    print(f"case {seed}: {n_img} images, {len(cat_ids)} categories, {len(anns)} annotations "
          f"({sum(a['iscrowd'] for a in anns)} crowd), {len(dets)} detections")


NAMES = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
         "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large"]


def compare(case_dir, ours_path):
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(f"{case_dir}/gt.json")
        dt = gt.loadRes(f"{case_dir}/dt.json")
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = json.load(open(ours_path))
    worst = 0.0
    for i, name in enumerate(NAMES):
        diff = abs(ours[name] - ev.stats[i])
        worst = max(worst, diff)
        if diff > 1e-3:
            print(f"  {name}: kd {ours[name]:.6f} pycocotools {ev.stats[i]:.6f}")
    # Per-category AP as well (area all, 100 detections).
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, 2]
        theirs = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
        mine = next(c["ap"] for c in ours["per_category"] if c["category_id"] == cat)
        diff = abs(mine - theirs)
        worst = max(worst, diff)
        if diff > 1e-3:
            print(f"  category {cat} AP: kd {mine:.6f} pycocotools {theirs:.6f}")
    print(f"  AP {ev.stats[0]:.4f}  AP50 {ev.stats[1]:.4f}  AR100 {ev.stats[8]:.4f}  "
          f"largest difference {worst:.3g}")
    return worst


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "compare":
        worst = compare(sys.argv[2], sys.argv[3])
        open(f"{sys.argv[2]}/worst.txt", "w").write(repr(float(worst)))
        sys.exit(0 if worst <= 1e-3 else 1)
    else:
        sys.exit(__doc__)
