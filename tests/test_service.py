"""The service end to end: bundles built by Snakemake on the tiny demo, the real server
(uvicorn in a subprocess on a free loopback port) and a real HTTP client (httpx).

Expected answers come from the pipeline's own outputs for the same images: its
neighbours, its poses, its database table; text answers from the bundle's names and,
for CLIP, from open_clip called directly.
"""

import io
import json
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chromium import Chromium, find_chromium, free_port
from conftest import planned_jobs, run_snakemake, write_config
from vprflow.serve.server import spawn, stop

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.e2e

TINY_CLIP = "vprflow-test-service-clip"
BUNDLES = ["results/service/tiny/exact/bundle.json", "results/service/heads/exact/bundle.json"]
HEADS = {"descriptor": "cnn", "backbone": "mobilenet_v3_small", "weights": "none", "width": 64, "height": 48,
         "precision": "fp32", "pooling": "gem", "train": "name_category", "epochs": 1, "lr": 1e-3}
MAX_UPLOAD_MB = 0.5
MAX_PIXELS = 1_000_000
K = 10


def service_config(clip_files):
    model_config, checkpoint = clip_files
    return {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
            "shards": {"images_per_shard": 500},  # one shard: fewer jobs
            "models": {"tiny": {"descriptor": "tiny_image"}, "heads": HEADS,
                       "clip": {"descriptor": "clip", "model": TINY_CLIP, "model_config": str(model_config),
                                "checkpoint": str(checkpoint), "pretrained": None, "precision": "fp32"}},
            "searches": {"exact": {"backend": "exact", "metric": "ip", "k": K}},
            "pose": {"method": "consensus", "k": 3},
            "service": {"clip_model": "clip", "thumbnail_side": 96}}


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A tiny open_clip architecture (its JSON config) and its random weights (a state dict)."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model_config = folder / f"{TINY_CLIP}.json"
    model_config.write_text(json.dumps(config))
    open_clip.add_model_config(model_config)
    torch.manual_seed(0)
    checkpoint = folder / "tiny_clip.pt"
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), checkpoint)
    return model_config, checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory, clip_files):
    """The tiny demo through Snakemake: two bundles, the searches and poses they must agree
    with, and the clip model evaluated like any other."""
    workdir = tmp_path_factory.mktemp("service_run")
    config = write_config(workdir, service_config(clip_files))
    run_snakemake(workdir, config, *BUNDLES, "results/search/tiny/exact/neighbours.parquet",
                  "results/search/heads/exact/neighbours.parquet", "results/poses/tiny/exact.csv",
                  "results/eval/clip/exact/recall.tsv")
    return workdir, config


def root_of(workdir):
    return workdir / "resources" / "demo" / "tiny-seed0"


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """The tiny_image bundle served with small limits, a long batching window, the ngram
    text engine, and a temporary folder of its own (which must stay empty)."""
    import os

    workdir, _ = run
    temporary = tmp_path_factory.mktemp("server_tmp")
    port = free_port()
    process = spawn(workdir / "results/service/tiny/exact", port, "--max-upload-mb", str(MAX_UPLOAD_MB),
                    "--max-pixels", str(MAX_PIXELS), "--batch-window-ms", "300", "--text-engine", "ngram",
                    "--threads", "1", log=workdir / "server.log", env={**os.environ, "TMPDIR": str(temporary)})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, temporary, workdir / "server.log"
    stop(process)


@pytest.fixture(scope="module")
def heads_server(run):
    workdir, _ = run
    port = free_port()
    process = spawn(workdir / "results/service/heads/exact", port, "--threads", "1", log=workdir / "heads.log")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    stop(process)


def pipeline_neighbours(workdir, model):
    """query path -> the pipeline's ranked database ids and scores."""
    neighbours = pd.read_parquet(workdir / f"results/search/{model}/exact/neighbours.parquet")
    manifest = pd.read_parquet(workdir / "results/manifest.parquet")
    paths = dict(zip(manifest["image_id"], manifest["path"]))
    ranked = neighbours.sort_values(["query_id", "rank"]).groupby("query_id")
    return {paths[q]: (list(g["db_id"]), list(g["score"])) for q, g in ranked}


def post_image(client, path, k=K, multipart=False):
    data = path.read_bytes()
    if multipart:
        return client.post("/search/image", params={"k": k}, files={"file": (path.name, data, "image/jpeg")})
    return client.post("/search/image", params={"k": k}, content=data)


def test_health_page_and_metrics(server, run):
    client, _, log = server
    workdir, _ = run
    database = pd.read_parquet(workdir / "results/service/tiny/exact/database.parquet")
    health = client.get("/health").json()
    assert (health["model"], health["search"], health["descriptor"], health["backend"]) == ("tiny", "exact",
                                                                                         "tiny_image", "exact")
    assert health["n_database"] == len(database) and health["max_k"] == K and health["heads"] == []
    assert (health["text_engine"], health["text_engine_configured"]) == ("ngram", "ngram")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="grid"' in page.text and 'type="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from the internet
    metrics = client.get("/metrics").json()
    assert metrics["requests"]["GET /health 200"] >= 1 and metrics["rss_mb"] > 0
    assert metrics["latency"]["GET /"]["count"] >= 1
    text = log.read_text()
    assert "Uvicorn running on http://127.0.0.1:" in text  # loopback by default
    assert "GET /health 200" in text and " ms" in text  # a log line per request with its latency


def test_image_answers_equal_the_pipeline_neighbours(server, run):
    client, _, _ = server
    workdir, _ = run
    expected = pipeline_neighbours(workdir, "tiny")
    assert len(expected) >= 5
    for i, (path, (ids, scores)) in enumerate(sorted(expected.items())):
        answer = post_image(client, root_of(workdir) / path, multipart=i % 2 == 0)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["id"] for r in results] == ids, path
        np.testing.assert_allclose([r["score"] for r in results], scores, rtol=1e-5, atol=1e-6)
        assert all(r["thumbnail"] == f"/thumbnails/{r['id']}" for r in results)


def test_poses_are_the_pose_stage_ones(server, run):
    client, _, _ = server
    workdir, _ = run
    poses = pd.read_csv(workdir / "results/poses/tiny/exact.csv")  # pose.method consensus, k 3
    manifest = pd.read_parquet(workdir / "results/manifest.parquet").set_index("image_id")
    for row in poses.itertuples():
        pose = post_image(client, root_of(workdir) / row.query_path).json()["pose"]
        assert pose["method"] == "consensus"
        assert pose["top1"]["image_id"] == row.db_id
        assert pose["top1"]["x"] == pytest.approx(manifest.loc[row.db_id, "x"])
        assert (pose["consensus"]["x"], pose["consensus"]["y"]) == (pytest.approx(row.x, abs=1e-3),
                                                                     pytest.approx(row.y, abs=1e-3))
        assert pose["consensus"]["n_agreeing"] == row.n_agreeing


def test_concurrent_queries_share_one_forward_pass(server, run):
    client, _, _ = server
    workdir, _ = run
    expected = pipeline_neighbours(workdir, "tiny")
    before = client.get("/metrics").json()["image_batches"]
    paths = sorted(expected)
    with ThreadPoolExecutor(len(paths)) as pool:  # all at once, well inside the 300 ms window
        answers = list(pool.map(lambda p: post_image(client, root_of(workdir) / p), paths))
    after = client.get("/metrics").json()["image_batches"]
    assert after["images"] - before["images"] == len(paths)
    # One or two batches on a quiet machine; a loaded one (CI, 2 cores) may start the clients'
    # threads late enough to split the burst once more. Half of them sharing one pass is the point.
    assert after["batches"] - before["batches"] <= 3 and after["largest"] >= len(paths) // 2
    for path, answer in zip(paths, answers):  # each caller gets its own answer back
        assert [r["id"] for r in answer.json()["results"]] == expected[path][0]


def png_header_only(width, height):
    """A PNG that declares width x height pixels and holds almost none: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND",
                                                                                                           b"")


def jpeg(rgb, quality=90):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_bad_input_gets_a_4xx_with_a_message_and_the_server_goes_on(server, run):
    client, _, _ = server
    workdir, _ = run
    good = next(iter(sorted(pipeline_neighbours(workdir, "tiny"))))
    photo = (root_of(workdir) / good).read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    over_limit = jpeg(noise, 95)
    assert len(over_limit) > MAX_UPLOAD_MB * 1e6
    cases = [
        ("empty body", dict(method="POST", url="/search/image", content=b""), 400, "empty body"),
        ("empty multipart file", dict(method="POST", url="/search/image", files={"file": ("a.jpg", b"")}), 400,
         "empty body"),
        ("not an image", dict(method="POST", url="/search/image", content=b"hello, not a photo"), 415,
         "not an image"),
        ("truncated", dict(method="POST", url="/search/image", content=photo[: len(photo) // 2]), 400, "truncated"),
        ("over --max-upload-mb", dict(method="POST", url="/search/image", content=over_limit), 413, "upload limit"),
        ("decompression bomb", dict(method="POST", url="/search/image", content=png_header_only(50_000, 50_000)),
         413, "2500000000 pixels"),
        ("over --max-pixels", dict(method="POST", url="/search/image",
                                   content=jpeg(np.zeros((1000, 1001, 3), np.uint8))), 413, "over the limit"),
        ("no file field", dict(method="POST", url="/search/image", files={"photo": ("a.jpg", photo)}), 400,
         "no field 'file'"),
        ("k = 0", dict(method="POST", url="/search/image", params={"k": 0}, content=photo), 422, "between 1 and 10"),
        ("k over the search's k", dict(method="POST", url="/search/image", params={"k": K + 1}, content=photo), 422,
         "between 1 and 10"),
        ("k not a number", dict(method="POST", url="/search/image", params={"k": "ten"}, content=photo), 422,
         "valid integer"),
        ("unknown image id", dict(method="GET", url="/thumbnails/0123456789abcdef"), 404, "unknown image id"),
        ("a path, not an id", dict(method="GET", url="/thumbnails/..%2F..%2Fresults%2Fmanifest.parquet"), 404, ""),
        ("empty text query", dict(method="GET", url="/search/text", params={"q": "  "}), 400, "empty text query"),
        ("text k = 0", dict(method="GET", url="/search/text", params={"q": "elm", "k": 0}), 422, "between 1"),
    ]
    for name, request, status, message in cases:
        answer = client.request(**request)
        assert answer.status_code == status, (name, answer.text)
        assert message in json.dumps(answer.json()), (name, answer.text)
        assert client.get("/health").status_code == 200, name
    assert post_image(client, root_of(workdir) / good).status_code == 200  # still answering


def test_uploads_are_never_written_to_disk(server, run):
    client, temporary, _ = server
    workdir, _ = run
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    data = jpeg(noise, 95)
    assert 1e5 < len(data) < MAX_UPLOAD_MB * 1e6
    for _ in range(2):  # multipart parsers that spool large parts would write here
        answer = client.post("/search/image", files={"file": ("noise.jpg", data, "image/jpeg")})
        assert answer.status_code == 200, answer.text
    assert list(temporary.iterdir()) == []


def test_thumbnails_are_the_database_images(server, run):
    client, _, _ = server
    workdir, _ = run
    database = pd.read_parquet(workdir / "results/service/tiny/exact/database.parquet")
    for row in database.itertuples():
        answer = client.get(f"/thumbnails/{row.image_id}")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        thumbnail = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"), dtype=float)
        source = Image.open(root_of(workdir) / row.path).convert("RGB")
        scale = 96 / max(source.size)  # service.thumbnail_side
        assert thumbnail.shape[:2] == (round(source.height * scale), round(source.width * scale))
        expected = np.asarray(source.resize(thumbnail.shape[1::-1], Image.Resampling.BOX), dtype=float)
        assert np.abs(thumbnail - expected).mean() < 6  # the same picture, not just any


def test_text_queries_return_the_photos_of_the_named_places(server, run):
    client, _, _ = server
    workdir, _ = run
    database = pd.read_parquet(workdir / "results/service/tiny/exact/database.parquet")
    photos = database.groupby("name")["image_id"].apply(list)
    for name, ids in photos.items():
        body = client.get("/search/text", params={"q": name, "k": 3}).json()
        assert body["engine"] == "ngram" and body["places"][0]["label"] == name
        assert len(body["places"]) <= 3
        assert [r["id"] for r in body["results"][: len(ids)]] == ids
        assert all(r["match"] == name for r in body["results"][: len(ids)])
    street, number = photos.index[0].rsplit(" ", 1)
    misspelt = street.replace("Street", "Stret").lower() + " " + number  # "elm stret 3"
    assert client.get("/search/text", params={"q": misspelt}).json()["places"][0]["label"] == photos.index[0]


def test_heads_and_the_clip_text_engine(heads_server, run, clip_files):
    import open_clip
    import torch

    client = heads_server
    workdir, _ = run
    health = client.get("/health").json()
    assert health["heads"] == ["category", "name"] and health["text_engine"] == "clip"

    expected = pipeline_neighbours(workdir, "heads")
    split = pd.read_parquet(workdir / "results/split.parquet")
    manifest = pd.read_parquet(workdir / "results/manifest.parquet")
    train = manifest[manifest["image_id"].isin(split.loc[split["split"] == "train", "image_id"])]
    for path, (ids, _) in sorted(expected.items())[:4]:
        body = post_image(client, root_of(workdir) / path).json()
        assert [r["id"] for r in body["results"]] == ids
        for head, n_classes in (("name", train["name"].nunique()), ("category", train["category"].nunique())):
            labels = body["labels"][head]
            probabilities = [v["probability"] for v in labels]
            assert len(labels) == min(5, n_classes) and set(v["label"] for v in labels) <= set(train[head])
            assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6

    # CLIP text answers, recomputed with open_clip directly: text tower against the image embeddings
    database = pd.read_parquet(workdir / "results/service/heads/exact/database.parquet")
    ids = [line for line in (workdir / "results/features/clip/ids.txt").read_text().split()]
    vectors = np.load(workdir / "results/features/clip/vectors.npy")[[ids.index(i) for i in database["image_id"]]]
    model = open_clip.create_model(TINY_CLIP, pretrained=str(clip_files[1])).eval()
    query = "a street with shops"
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer(TINY_CLIP)([query])), dim=-1)
    similarity = vectors @ text[0].numpy()
    best = database.assign(s=similarity).groupby("group")["s"].max().sort_values(ascending=False, kind="stable")
    body = client.get("/search/text", params={"q": query, "k": 3}).json()
    assert body["engine"] == "clip"
    assert [p["label"] for p in body["places"]] == list(best.index[:3])
    np.testing.assert_allclose([p["score"] for p in body["places"]], best.to_numpy()[:3], rtol=1e-4, atol=1e-5)


def test_offline_clip_falls_back_to_the_ngram_engine(run):
    from vprflow.serve.bundle import Bundle
    from vprflow.serve.engine import TextSearch

    workdir, _ = run
    bundle = Bundle.load(workdir / "results/service/heads/exact")
    bundle.record["text"]["clip_settings"]["checkpoint"] = str(workdir / "gone.pt")
    text = TextSearch(bundle)
    assert text.name == "ngram" and text.configured == "auto"
    assert "CLIP unavailable" in text.reason and "gone.pt" in text.reason
    assert text.search("Elm Street 3", 1)[0].label == "Elm Street 3"


def test_a_stale_bundle_is_rebuilt(run, tmp_path):
    workdir, _ = run
    config = service_config_of(run)
    assert planned_jobs(workdir, write_config(tmp_path, config), *BUNDLES) == {}
    config["service"]["thumbnail_side"] = 64
    assert planned_jobs(workdir, write_config(tmp_path, config), *BUNDLES) == {"service_bundle": 2}
    config = service_config_of(run)
    config["searches"]["exact"]["k"] = 5
    plan = planned_jobs(workdir, write_config(tmp_path, config), *BUNDLES)
    assert plan["service_bundle"] == 2 and "extract" not in plan and "build_index" not in plan


def service_config_of(run):
    import yaml

    return yaml.safe_load(run[1].read_text())


def test_the_commands(tmp_path):
    for command in ([sys.executable, "-m", "vprflow.serve", "--help"],
                    [sys.executable, "-c", "from vprflow.cli import main; main()", "serve", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0 and "--max-upload-mb" in result.stdout and "127.0.0.1" in result.stdout
    result = subprocess.run([sys.executable, "-m", "vprflow.serve", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "no bundle.json" in result.stderr


def test_the_page_shows_a_grid_for_an_uploaded_photo(server, run, tmp_path):
    binary, reason = find_chromium()
    if binary is None:
        pytest.skip(reason)
    client, _, _ = server
    workdir, _ = run
    path, (ids, _) = sorted(pipeline_neighbours(workdir, "tiny").items())[0]
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.open(f"{client.base_url}/", ready="document.getElementById('about').textContent.includes('model')")
        browser.set_files("#file", [root_of(workdir) / path])
        browser.wait_for(f"document.querySelectorAll('#grid .card').length === {K}", timeout=60)
        shown = browser.evaluate("[...document.querySelectorAll('#grid .card')].map(c => c.dataset.id)")
        assert shown == ids  # the page shows the pipeline's neighbours, in order
        browser.wait_for("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
        assert "top-1 pose" in browser.evaluate("document.getElementById('summary').textContent")
        browser.evaluate("document.getElementById('q').value = 'Elm Street 3';"
                         "document.getElementById('text-form').requestSubmit()")
        browser.wait_for("document.getElementById('summary').textContent.includes('places (ngram)')")
        assert browser.evaluate("document.querySelector('#grid .card .place').textContent") == "p0001"
        assert browser.screenshot(tmp_path / "page.png").stat().st_size > 10_000
    finally:
        browser.close()
