"""The load stage: each row gets its sample's available modality decoded from the dataset (the
text when the image is missing, the image when the text is, both for a complete sample), a text
the row already carries is kept, and only the row whose sample cannot be read fails, with one
line naming the problem."""
from PIL import Image

from kbridge.engine.rows import Row
from kbridge.engine.types import Sample


def test_load_decodes_each_rows_available_modality_and_fails_only_the_bad_row(stage_ctx, call_stage, demo_set,
                                                                              demo_index):
    img, txt, both = demo_index["image"], demo_index["text"], demo_index["complete"]
    rows = [Row(Sample(f"demo:{img}", img, None, None, "image")),
            Row(Sample("demo:99", 99, None, None, "image")),   # past the end of the 12-item demo set
            Row(Sample(f"demo:{txt}", txt, None, None, "text")),
            Row(Sample(f"demo:{both}", both, "a text sent with the request", None, None))]
    out = call_stage("load", rows, stage_ctx())

    assert [r.sample_id for r in out] == [r.sample_id for r in rows]  # one row back per row, in order
    a, bad, b, c = out
    assert a.error is None and a.sample.image is None
    assert a.sample.text == demo_set.items[img]["captions"][0]  # COCO: the first caption
    assert b.error is None and b.sample.text is None and b.sample.image.mode == "RGB"
    with Image.open(demo_set.root / demo_set.items[txt]["file_name"]) as raw:
        assert b.sample.image.size == raw.size  # the demo images are under the pixel cap: not resized
    assert c.error is None and c.sample.text == "a text sent with the request" and c.sample.image is not None
    assert (bad.error.stage, bad.sample.text, bad.sample.image) == ("load", None, None)
    assert bad.error.message == "index 99 is past the end of the dataset (12 items)"
    # loading again changes nothing: a loaded row passes through as it is
    assert all(x is y for x, y in zip(call_stage("load", [a, b, c], stage_ctx()), [a, b, c]))
