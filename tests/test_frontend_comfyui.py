"""The official ComfyUI frontend as an optional UI: the routes it needs (user data, jobs, templates …) over HTTP, and
— when the user-installed `comfyui-frontend-package` (GPL, test-time only) and Debian's Chromium are present — a
real browser booting it against `latentgraph serve --frontend comfyui`, loading an SDXL template from its template
browser, queueing it and seeing the output image."""
import argparse
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image
from patience import async_wait_until, patience
from server_helpers import free_port, make_config, start_server
from template_helpers import place_demo_checkpoints

from server.app import REPO, STATE, add_arguments, config_from_args, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "frontend-comfyui"


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(make_config(tmp_path)))


# -- routes --------------------------------------------------------------------------------------------------------

async def test_userdata_write_list_read_move_delete(client):
    path = "/api/userdata/workflows%2Fmy%20flow.json"
    resp = await client.post(path + "?overwrite=false&full_info=true", data=b'{"nodes": []}')
    info = await resp.json()
    assert resp.status == 200 and info["path"] == "workflows/my flow.json" and info["size"] == 13
    assert (await client.post(path + "?overwrite=false", data=b"{}")).status == 409  # no silent replace
    resp = await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "split": "false",
                                                     "full_info": "true"})
    assert [f["path"] for f in await resp.json()] == ["my flow.json"]
    assert await (await client.get(path)).read() == b'{"nodes": []}'
    resp = await client.post(path + "/move/workflows%2Frenamed.json?overwrite=false")
    assert resp.status == 200 and await resp.json() == "workflows/renamed.json"
    assert (await client.get(path)).status == 404
    listing = await (await client.get("/api/v2/userdata", params={"path": "workflows"})).json()
    assert [(e["name"], e["type"]) for e in listing] == [("renamed.json", "file")]
    assert (await client.delete("/api/userdata/workflows%2Frenamed.json")).status == 204
    assert await (await client.get("/api/userdata", params={"dir": "workflows"})).json() == []
    assert (await client.get("/api/userdata", params={"dir": "nothing-here"})).status == 404


async def test_userdata_paths_stay_inside_the_user_folder(client):
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "workflows%2F..%2F..%2Fsecret"):
        assert (await client.get(f"/api/userdata/{bad}")).status in (403, 404)
        assert (await client.post(f"/api/userdata/{bad}", data=b"x")).status in (403, 404)
    root = Path(client.app[STATE].config.data_dir)
    assert not (root.parent / "secret").exists()


async def test_jobs_list_queue_and_history_in_the_frontend_shape(client):
    from server_helpers import image_prompt
    resp = await client.post("/api/prompt", json={"prompt": image_prompt(prefix="job"),
                                                  "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}})
    prompt_id = (await resp.json())["prompt_id"]

    async def finished():
        data = await (await client.get("/api/jobs", params={"status": "completed,failed,cancelled"})).json()
        return data if data["jobs"] else None
    data = await async_wait_until(finished, what="the job finished")
    (job,) = data["jobs"]
    assert data["pagination"] == {"offset": 0, "limit": 200, "total": 1, "has_more": False}
    assert job["id"] == prompt_id and job["status"] == "completed" and job["workflow_id"] == "wf-1"
    required = {"id", "status", "create_time", "execution_start_time", "execution_end_time", "preview_output",
                "outputs_count", "previewable_outputs_count", "execution_error", "workflow_id", "priority"}
    assert required <= set(job)
    assert job["preview_output"]["filename"].startswith("job") and job["preview_output"]["mediaType"] == "images"
    assert job["outputs_count"] == job["previewable_outputs_count"] == 1
    detail = await (await client.get(f"/api/jobs/{prompt_id}")).json()
    recorded = {i: {**n, "_meta": {"ver": "1.0.0"}} for i, n in image_prompt(prefix="job").items()}  # node versions
    assert detail["outputs"] and detail["workflow"]["prompt"] == recorded
    assert (await client.get("/api/jobs/nope")).status == 404
    assert (await client.get("/api/jobs", params={"status": "done"})).status == 400
    empty = await (await client.get("/api/jobs", params={"status": "pending,in_progress"})).json()
    assert empty["jobs"] == [] and empty["pagination"]["total"] == 0


async def test_cancel_a_pending_job(client):
    from server_helpers import image_prompt
    state = client.app[STATE]
    state.queue.set_paused(True)  # keep it pending
    resp = await client.post("/api/prompt", json={"prompt": image_prompt(prefix="later")})
    prompt_id = (await resp.json())["prompt_id"]
    pending = await (await client.get("/api/jobs", params={"status": "pending"})).json()
    assert [j["id"] for j in pending["jobs"]] == [prompt_id]
    assert (await client.post(f"/api/jobs/{prompt_id}/cancel")).status == 200
    assert (await (await client.get("/api/jobs", params={"status": "pending"})).json())["jobs"] == []
    assert (await client.post(f"/api/jobs/{prompt_id}/cancel")).status == 404
    state.queue.set_paused(False)


async def test_optional_extras_answer(client):
    for path in ("/api/i18n", "/api/workflow_templates", "/api/global_subgraphs"):
        resp = await client.get(path)
        assert resp.status == 200 and await resp.json() == {}
    (Path(client.app[STATE].config.models_dir) / "checkpoints").mkdir(exist_ok=True)
    folders = await (await client.get("/api/experiment/models")).json()
    assert [f["name"] for f in folders] == ["checkpoints"]
    assert await (await client.get("/api/experiment/models/checkpoints")).json() == []
    assert "checkpoints" in await (await client.get("/internal/folder_paths")).json()
    resp = await client.get("/user.css")
    assert resp.status == 200 and resp.content_type == "text/css"


async def test_shipped_workflows_are_templates_grouped_by_family_with_thumbnails(aiohttp_client, tmp_path):
    """/templates/index.json exists without the template package: our workflows, one category per family (from the
    file's extra.family, else its name), each with its JSON and a WebP thumbnail of its layout."""
    shipped = tmp_path / "workflows"
    shipped.mkdir()
    for name in ("image_basic.json", "sdxl_base.json", "sdxl_base_comfy.json"):
        shutil.copy(REPO / "workflows" / name, shipped)
    newcomer = json.loads((REPO / "workflows" / "image_basic.json").read_text())
    del newcomer["extra"]["family"]
    (shipped / "flux_dev_basic.json").write_text(json.dumps(newcomer))  # a family that lands later: grouped by name
    client = await aiohttp_client(create_app(make_config(tmp_path, workflows_dir=shipped)))
    index = await (await client.get("/templates/index.json")).json()
    ours = [c for c in index if c["category"] == "latentgraph"]
    assert [(c["title"], [t["name"] for t in c["templates"]]) for c in ours] == [
        ("FLUX", ["flux_dev_basic"]), ("Basics", ["image_basic"]), ("SDXL", ["sdxl_base", "sdxl_base_comfy"])]
    sdxl = ours[2]["templates"][0]
    assert sdxl["title"] == "SDXL base" and sdxl["description"].startswith("SDXL base text-to-image")
    assert ours[2]["moduleName"] == "default" and sdxl["mediaSubtype"] == "webp"
    workflow = await (await client.get("/templates/sdxl_base.json")).json()
    assert workflow == json.loads((shipped / "sdxl_base.json").read_text())
    resp = await client.get("/templates/sdxl_base-1.webp")
    assert resp.status == 200 and resp.content_type == "image/webp"
    with Image.open(io.BytesIO(await resp.read())) as thumb:
        assert thumb.size == (400, 300)
        assert len(thumb.convert("RGB").getcolors(maxcolors=1 << 16)) > 5, "the thumbnail draws the layout"
    for bad in ("..%2Fsdxl_base.json", "nope.json", "sdxl_base-1.png"):
        assert (await client.get(f"/templates/{bad}")).status in (403, 404)


async def test_template_browser_files_come_from_the_template_package(client):
    pytest.importorskip("comfyui_workflow_templates_json")
    index = await (await client.get("/templates/index.json")).json()
    assert any(t["name"] == "image_sdxl_simple" for c in index for t in c["templates"])
    workflow = await (await client.get("/templates/image_sdxl_simple.json")).json()
    assert any(n["type"] == "CheckpointLoaderSimple" for n in workflow["nodes"])
    assert (await client.get("/templates/..%2F__init__.py")).status in (403, 404)


def test_frontend_flag_serves_the_installed_package(tmp_path):
    pkg = pytest.importorskip("comfyui_frontend_package", reason="optional: pip install comfyui-frontend-package")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--frontend", "comfyui", "--data", str(tmp_path)]))
    assert config.web_dir == Path(pkg.__file__).parent / "static"
    assert config_from_args(parser.parse_args([])).web_dir.name == "web"


# -- the official frontend in a browser ----------------------------------------------------------------------------

def _browser_prerequisites():
    pytest.importorskip("comfyui_frontend_package", reason="optional: pip install comfyui-frontend-package (GPL)")
    pytest.importorskip("comfyui_workflow_templates_json", reason="test extra comfyui-workflow-templates-json")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.mark.browser
@pytest.mark.slow
async def test_official_frontend_loads_a_template_queues_it_and_shows_the_image(tmp_path):
    _browser_prerequisites()
    from playwright.async_api import async_playwright

    place_demo_checkpoints(tmp_path / "models", {"sd_xl_base_1.0.safetensors"})
    port = free_port()
    proc = start_server(tmp_path, port, "--frontend", "comfyui")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(patience(30) * 1000)  # Playwright's own default, stretched by the load
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function("() => !!(window.app && window.app.graph)", timeout=patience(90) * 1000)

            # the template browser, fed by /templates/index.json; pick the SDXL text-to-image template
            await page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            dialog = page.get_by_role("dialog")
            await dialog.get_by_placeholder("Search").fill("SDXL1.0")
            await dialog.get_by_text("SDXL1.0: Text to Image (Simple)").first.click()
            await page.wait_for_function(
                "() => app.graph.nodes.some(n => n.type === 'CheckpointLoaderSimple')", timeout=patience(30) * 1000)
            types = await page.evaluate("() => app.graph.nodes.map(n => n.type).sort()")
            assert types == sorted(["SaveImage", "CLIPTextEncode", "CLIPTextEncode", "KSampler", "EmptyLatentImage",
                                    "VAEDecode", "CheckpointLoaderSimple", "MarkdownNote"])
            await page.screenshot(path=str(ARTIFACTS / "1-template-loaded.png"))

            # tiny models: a 64×64 latent and 3 steps keep the CPU run short; everything else as shipped
            await page.evaluate("""() => {
                const widget = (type, name) => app.graph.nodes.find(n => n.type === type)
                    .widgets.find(w => w.name === name);
                widget('EmptyLatentImage', 'width').value = 64;
                widget('EmptyLatentImage', 'height').value = 64;
                widget('KSampler', 'steps').value = 3;
            }""")
            started = time.monotonic()
            async with page.expect_response(lambda r: r.url.endswith("/api/prompt")
                                            and r.request.method == "POST") as queued:
                await page.get_by_role("button", name="Run").first.click()
            resp = await queued.value
            assert resp.status == 200, await resp.text()
            async with page.expect_response(lambda r: "/api/view" in r.url and "sdxl_simple_" in r.url,
                                            timeout=patience(180) * 1000) as viewed:
                pass
            assert (await viewed.value).status == 200
            await page.wait_for_function(
                "() => (app.graph.nodes.find(n => n.type === 'SaveImage').imgs || []).length > 0", timeout=patience(30) * 1000)
            size = await page.evaluate("""() => {
                const img = app.graph.nodes.find(n => n.type === 'SaveImage').imgs[0];
                return [img.naturalWidth, img.naturalHeight];
            }""")
            assert size == [64, 64]
            await page.screenshot(path=str(ARTIFACTS / "2-output-shown.png"))
            print(f"\nofficial frontend: queued to image shown in {time.monotonic() - started:.1f}s")

            # our shipped workflows are templates there too, with their thumbnails
            async with page.expect_response(lambda r: r.url.endswith("/templates/sdxl_base_refiner-1.webp")) as thumb:
                await page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
                await dialog.get_by_placeholder("Search").fill("SDXL base refiner")
            assert (await thumb.value).status == 200
            await dialog.get_by_text("SDXL base refiner").first.click()
            await page.wait_for_function(
                "() => app.graph.nodes.filter(n => n.type === 'KSamplerAdvanced').length === 2", timeout=patience(30) * 1000)
            await page.screenshot(path=str(ARTIFACTS / "3-shipped-template.png"))
            assert not errors, errors
            await browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=patience(30))
    assert list((tmp_path / "output").glob("sdxl_simple_*.png"))
