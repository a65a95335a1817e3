"""The canvas survives a server restart: the websocket reconnects and queueing works again."""
import pytest
from patience import patience

pytestmark = pytest.mark.browser


def test_websocket_reconnects_after_server_restart(open_canvas, restartable_server):
    page = open_canvas(restartable_server.url)
    page.allow_console_error("ERR_CONNECTION_REFUSED")  # the browser reports each try while the server is down
    shot = page.shot
    badge = page.locator("#connection")
    page.wait_for_function("document.querySelector('#connection').textContent === 'online'")
    restartable_server.stop()
    page.wait_for_function("document.querySelector('#connection').textContent === 'reconnecting…'")
    shot("server-down")
    restartable_server.start()
    page.wait_for_function("document.querySelector('#connection').textContent === 'online'", timeout=patience(30) * 1000)
    assert "online" in badge.get_attribute("class")
    page.keyboard.press("Control+Enter")
    page.click('.side-tabs button[data-panel="gallery-panel"]')
    page.locator("#gallery img").first.wait_for(timeout=patience(60) * 1000)
    shot("ran-after-restart")
