"""The web chat page in real headless Chromium: upload a photo, see the answer, press a button, see the edit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from bot.playground import PlaygroundServer
from bot.store.models import Feedback

from bot_harness import RED, bot_settings, colour_model, jpeg_bytes, running_bot

pytestmark = pytest.mark.chromium
CHROMIUM = os.environ.get("SNEAKERBOT_TEST_CHROMIUM") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("SNEAKERBOT_TEST_CHROMEDRIVER") or "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1000,800")


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def use_page(url: str, photo: Path) -> dict[str, str]:
    """What a person does on the page (blocking: run in a thread while the server serves)."""
    driver = chromium()
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(url)
        wait.until(ec.text_to_be_present_in_element((By.ID, "title"), "playground"))
        driver.find_element(By.ID, "photo-input").send_keys(str(photo))
        answer = wait.until(ec.presence_of_element_located(
            (By.XPATH, "//div[contains(@class,'bot')][.//div[contains(@class,'text')][contains(., 'Air Jordan 11')]]")))
        answer_text = answer.find_element(By.CLASS_NAME, "text").text
        shown = driver.execute_script(
            "const img = document.querySelector('.msg.user img'); return img && img.complete && img.naturalWidth;")
        answer.find_element(By.XPATH, ".//button[contains(., 'Correct')]").click()
        message_id = answer.get_attribute("data-message-id")
        edited = wait.until(ec.text_to_be_present_in_element((By.ID, f"m{message_id}"), "Confirmed"))
        edited_text = driver.find_element(By.ID, f"m{message_id}").text
        buttons = [b.text for b in driver.find_elements(By.CSS_SELECTOR, f"#m{message_id} button.kb")]
        return {"answer": answer_text, "photo_width": str(shown), "edited": edited_text if edited else "",
                "buttons": "|".join(buttons)}
    finally:
        driver.quit()


async def test_web_page_photo_answer_button_edit(playground: PlaygroundServer, tmp_path: Path) -> None:
    photo = tmp_path / "red-sneaker.jpg"
    photo.write_bytes(jpeg_bytes(RED, (640, 480), noise=5))
    settings = bot_settings(tmp_path, f"sqlite:///{tmp_path / 'web.db'}")
    async with running_bot(playground, settings, colour_model()) as bot:
        seen = await asyncio.to_thread(use_page, f"{playground.url}/", photo)
    assert "Air Jordan 11 — 87%" in seen["answer"]
    assert int(seen["photo_width"]) > 0
    assert "Confirmed: Air Jordan 11" in seen["edited"] and "edited" in seen["edited"]
    assert seen["buttons"] == "✏️ Change answer"
    with bot.sessions() as session:
        assert [(f.verdict, f.label) for f in session.scalars(select(Feedback))] == [("correct", "air_jordan_11")]
