"""Input files in the official formats of the downstream datasets (SNLI-VE, RefCOCO/+/g), written
by the tests: the reader tests check what ingest makes of them, the downstream tests fine-tune on
them. Each has good records and hostile ones, with comments saying which."""
import json
import pickle


def line(flickr_id, hypothesis, label, pair=None, caption_id=None):
    """One line as the official files have it (premise fields included, unused)."""
    rec = {"Flickr30K_ID": flickr_id, "sentence1": "Two dogs play in the snow.",
           "sentence2": hypothesis, "gold_label": label,
           "captionID": caption_id or f"{flickr_id}.jpg#0",
           "annotator_labels": [label], "sentence1_parse": "(ROOT (S ...))"}
    if pair is not None:
        rec["pairID"] = pair
    return json.dumps(rec).encode()


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def snli_ve(folder, make_image):
    make_image(folder / "flickr30k_images" / "1000.jpg", (40, 30), fmt="JPEG")   # subfolder
    make_image(folder / "2000.jpg", (20, 20), fmt="JPEG")                        # flat
    write(folder / "snli_ve_train.jsonl", [
        line("1000", "Dogs are outside.", "entailment", "1000.jpg#0r1e"),
        line("1000", "  The dogs   are asleep. ", "contradiction", "1000.jpg#0r1c"),
        line("1000", "The dogs are brothers.", "neutral"),                   # no pairID
        line("1000", "Cats.", "-", "1000.jpg#0r2n"),                          # no consensus
        line("1000", "Cats.", "maybe", "1000.jpg#0r3n"),                      # not a label
        line("1000", "   ", "neutral", "1000.jpg#0r4n"),                      # empty hypothesis
        line("1000", "Again.", "neutral", "1000.jpg#0r1e"),                   # duplicate pairID
        line("12ab", "Bad id.", "neutral", "12ab#0r1n"),                      # not a Flickr id
        b'{"Flickr30K_ID": "1000", "sentence2": ',                             # malformed
        line("3000", "No file.", "entailment", "3000.jpg#0r1e"),              # image missing
    ])
    write(folder / "snli_ve_dev.jsonl", [
        line(2000, "A person.", "entailment", "2000.jpg#1r1e")])              # numeric id
    return folder


def sent(sent_id, text):
    return {"sent": text, "raw": text, "tokens": text.split() if isinstance(text, str) else [],
            "sent_id": sent_id}


def ref(ref_id, ann_id, image_id, split, sentences, category_id=1):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "sentences": sentences, "category_id": category_id,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sent_ids": [s.get("sent_id") for s in sentences if isinstance(s, dict)]}


def coco_name(image_id):
    return f"COCO_train2014_{image_id:012d}.jpg"


def refcoco(folder, make_image, write_json, refs=None, protocol=2):
    make_image(folder / "train2014" / coco_name(1), (64, 48))
    make_image(folder / coco_name(2), (40, 40))
    write_json(folder / "instances.json", {
        "images": [{"id": i, "file_name": coco_name(i), "width": w, "height": h}
                   for i, w, h in ((1, 64, 48), (2, 40, 40), (3, 30, 30), (4, 10, 10))],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [1, 2, 20, 10], "category_id": 1,
             "segmentation": [[1, 2, 3, 4]], "area": 200, "iscrowd": 0},
            {"id": 11, "image_id": 1, "bbox": [30, 5, 10, 10], "category_id": 2},
            {"id": 12, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 99},  # no category
            {"id": 20, "image_id": 2, "bbox": [0, 0, 100, 100], "category_id": 1},  # too big
            {"id": 21, "image_id": 2, "bbox": [5, 5, 10, 10], "category_id": 2},
            {"id": 30, "image_id": 3, "bbox": [1, 1, 5, 5], "category_id": 1},   # no file
            {"id": 40, "image_id": 4, "bbox": [1, 1, 5, 5], "category_id": 1},   # no ref
        ],
        "categories": [{"id": 1, "name": "Person", "supercategory": "person"},
                       {"id": 2, "name": "dog", "supercategory": "animal"}]})
    refs = refs if refs is not None else [
        ref(100, 10, 1, "testA", [sent(1000, "man on the left"),
                                   sent(1001, "  guy   in red "),
                                   sent(1002, ""),                       # no text
                                   {"sent": "no id"}]),                   # no sent_id
        ref(101, 11, 1, "testA", [sent(1010, "the dog")]),
        ref(102, 12, 1, "testA", [sent(1020, "a thing")]),              # region rejected
        ref(103, 77, 1, "testA", [sent(1030, "ghost")]),                # unknown ann_id
        ref(104, 21, 1, "testA", [sent(1040, "dog")]),                  # ann of image 2
        ref(200, 20, 2, "val", [sent(2000, "everything")]),             # box outside
        ref(201, 21, 2, "val", [sent(2010, "small dog"), sent(1000, "dup")]),
        ref(300, 30, 3, "train", [sent(3000, "no image file")]),
        {"ref_id": 400, "sentences": []},                                 # malformed
        "not a ref",
    ]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    return folder
