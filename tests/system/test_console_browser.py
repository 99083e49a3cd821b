"""The web console in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (never a downloaded browser), against a real daemon, Mosquitto and SQLite
file (``tests.support.console``, with ``[search]`` on). Load, log in, filter, search, page,
open an event, follow the live tail, the chart, dead letters, log out; hostile payloads stay
text. Screenshots go to
``$KAIRO_TEST_ARTIFACTS/console`` (default ``.artifacts/console``).

Skipped, with the reason, only where Chromium, chromedriver or Selenium is missing
(``.ci/run`` installs them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.console import DOORS, SEEDED, TOKEN, XSS_ID, Site, seeded_site
from tests.support.publisher import event_messages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
ARTIFACTS = Path(os.environ.get("KAIRO_TEST_ARTIFACTS") or ROOT / ".artifacts") / "console"
WAIT = 20.0  # seconds a page may take to show what a step waits for

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extra has it
    webdriver = None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or webdriver is None,
    reason="no Chromium/chromedriver/Selenium here (apt-get install chromium chromium-driver; "
           "pip install -e '.[test]'); .ci/run installs them")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with seeded_site(tmp_path_factory.mktemp("console-browser"), search__enabled="true") as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:  # present but cannot start: a failure, not a skip
        pytest.fail(f"chromium did not start under chromedriver: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_for(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.05,  # rows are replaced while read
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        check, message=what)


def column(driver: WebDriver, body: str, key: str) -> list[str]:
    """``data-<key>`` of each row of ``#body``, read in one script (no stale rows)."""
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tr'))"
        ".map((r) => r.dataset[arguments[1]]);", f"#{body}", key))


def rows(driver: WebDriver, body: str) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, f"#{body} tr")


def log_in(driver: WebDriver, site: Site, path: str = "/") -> None:
    """A fresh browser session through the login form, then ``path``."""
    driver.get(site.base + "/static/console.css")  # a page of this origin, to clear its cookies
    driver.delete_all_cookies()
    driver.get(site.base + "/")
    field = wait_for(driver, "the login form", lambda d: d.find_element(By.ID, "token"))
    field.send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(driver, "the console after login", lambda d: rows(d, "events-rows"))
    if path != "/":
        driver.get(site.base + path)
        wait_for(driver, f"events at {path}", lambda d: rows(d, "events-rows"))


def tab(driver: WebDriver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"button.tab[data-tab={name}]").click()


# ------------------------------------------------------------------------------ tests
def test_token_required_then_the_console_loads(browser: WebDriver, site: Site) -> None:
    """Without the cookie the page is the login form and shows no event; a wrong token keeps
    the form; the right one opens the console with every seeded event (newest first) and a
    cookie the page's script cannot read (HttpOnly, SameSite=Strict)."""
    browser.get(site.base + "/static/console.css")
    browser.delete_all_cookies()
    browser.get(site.base + "/")
    wait_for(browser, "the login form", lambda d: d.find_element(By.ID, "token"))
    assert "kairo.test" not in browser.page_source
    assert not browser.find_elements(By.ID, "events-rows")
    browser.find_element(By.ID, "token").send_keys("not-the-token-at-all")
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(browser, "the login form again", lambda d: d.find_element(By.ID, "token"))
    assert not browser.get_cookies()
    shot(browser, "01-login")

    log_in(browser, site)
    wait_for(browser, f"{SEEDED} events", lambda d: len(rows(d, "events-rows")) == SEEDED)
    seqs = [int(seq) for seq in column(browser, "events-rows", "seq")]
    assert seqs == sorted(seqs, reverse=True)
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""
    wait_for(browser, "the health figures", lambda d: "healthy" in d.find_element(By.ID, "health").text)
    shot(browser, "02-events")


def test_hostile_event_stays_text(browser: WebDriver, site: Site) -> None:
    """An event whose payload and source hold markup and script is shown as those characters,
    in the list and in its full JSON: no element is made of it, no script of it runs."""
    log_in(browser, site)
    row = wait_for(browser, "the hostile event's row", lambda d: d.find_element(
        By.CSS_SELECTOR, f"#events-rows tr[data-id='{XSS_ID}']"))
    assert "<img src=x onerror=" in row.text and "<b>hostile</b>" in row.text
    row.click()
    detail = wait_for(browser, "the event's JSON", lambda d: d.find_element(By.ID, "detail-body")
                      if XSS_ID in d.find_element(By.ID, "detail-body").text else None)
    text = detail.text
    assert "<script>document.title='pwned'</script>" in text and '"source": "<b>hostile</b>"' in text
    assert browser.title == "kairo-sidecar"
    assert not browser.find_elements(By.TAG_NAME, "img")
    assert not browser.find_elements(By.CSS_SELECTOR, "main b, main i")
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1
    shot(browser, "03-event-detail")


def test_filter_and_page(browser: WebDriver, site: Site) -> None:
    """Ten rows a page (``/?limit=10``): Older walks back to the first event, every seq once
    and in the table's order; a type glob in the form shows only that type's events."""
    log_in(browser, site, "/?limit=10")
    seen: list[int] = []
    while True:
        wait_for(browser, "a page of events", lambda d: rows(d, "events-rows"))
        seqs = [int(seq) for seq in column(browser, "events-rows", "seq")]
        assert not set(seqs) & set(seen)
        seen += seqs
        older = browser.find_element(By.ID, "events-older")
        if not older.is_enabled():
            break
        older.click()
        wait_for(browser, "the next page", lambda d, last=seqs[-1]: rows(d, "events-rows") and int(
            rows(d, "events-rows")[0].get_attribute("data-seq")) < last)
    stored = [seq for (seq,) in site.rows("SELECT seq FROM events ORDER BY seq DESC")]
    assert seen == stored
    shot(browser, "04-last-page")

    browser.find_element(By.ID, "events-newest").click()
    form = browser.find_element(By.ID, "filters")
    form.find_element(By.NAME, "type").send_keys("kairo.door.*")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def doors(d: WebDriver) -> list[Any] | None:
        listed = rows(d, "events-rows")
        types = {r.find_elements(By.TAG_NAME, "td")[2].text for r in listed}
        return listed if types == {"kairo.door.opened"} else None

    assert len(wait_for(browser, "only door events", doors)) == DOORS
    shot(browser, "05-filtered")


def test_live_tail_shows_a_newly_published_event(browser: WebDriver, site: Site) -> None:
    """The live tail, once following, shows an event published to the broker afterwards
    (stored by the daemon, read from its reader connection), at the top."""
    log_in(browser, site)
    tab(browser, "tail")
    wait_for(browser, "the tail following", lambda d: "following" in d.find_element(
        By.ID, "tail-status").text)
    site.publish(event_messages(1, prefix="live"))
    row = wait_for(browser, "the new event in the tail", lambda d: d.find_elements(
        By.CSS_SELECTOR, "#tail-rows tr[data-id='live-000000']"))[0]
    assert rows(browser, "tail-rows")[0] == row
    assert "kairo.test.event" in row.text
    shot(browser, "06-live-tail")


def test_chart_is_drawn(browser: WebDriver, site: Site) -> None:
    """The chart tab draws bars for the last hour and a legend naming each stored type."""
    log_in(browser, site)
    tab(browser, "chart")
    select = browser.find_element(By.ID, "chart-range")
    select.find_element(By.CSS_SELECTOR, "option[value='1h']").click()
    bars = wait_for(browser, "bars", lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-svg rect.bar"))
    assert bars
    legend = browser.find_element(By.ID, "chart-legend").text
    for kind in ("kairo.test.event", "kairo.door.opened", "kairo.test.xss"):
        assert kind in legend
    shot(browser, "07-chart")


def test_dead_letters_with_reasons(browser: WebDriver, site: Site) -> None:
    """The dead letters tab lists both with their reasons; one opens with its payload as
    text, markup and all."""
    log_in(browser, site)
    tab(browser, "letters")
    listed = wait_for(browser, "2 dead letters", lambda d: len(rows(d, "letters-rows")) == 2
                      and rows(d, "letters-rows"))
    for row in listed:
        assert "not a JSON object" in row.find_element(By.CSS_SELECTOR, "td.reason").text
    listed[-1].click()  # the oldest: UTF-8 text with a script tag in it
    detail = wait_for(browser, "the dead letter", lambda d: d.find_element(By.ID, "detail-body")
                      if "dead letter" in d.find_element(By.ID, "detail-title").text else None)
    assert "<script>document.title='pwned'</script>" in detail.text
    assert browser.title == "kairo-sidecar"
    shot(browser, "08-dead-letters")


def test_search_shows_only_matches_highlighted(browser: WebDriver, site: Site) -> None:
    """Typing a word in the search box lists only the events holding it, the word in a <mark>
    the page built; the hostile event found by search still shows its markup as text (no
    element made of it, no script run)."""
    log_in(browser, site)
    box = wait_for(browser, "the search box", lambda d: d.find_element(By.NAME, "q")
                   if d.find_element(By.NAME, "q").is_displayed() else None)
    box.send_keys("door")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()

    def doors(d: WebDriver) -> list[Any] | None:
        listed = rows(d, "events-rows")
        types = {r.find_elements(By.TAG_NAME, "td")[2].text for r in listed}
        return listed if types == {"kairo.door.opened"} else None

    listed = wait_for(browser, "only door events", doors)
    assert len(listed) == DOORS
    for row in listed:
        marks = [m.text.lower() for m in row.find_elements(By.CSS_SELECTOR, "td.snippet mark")]
        assert marks == ["door"], row.text
    shot(browser, "09-search")

    box.clear()
    box.send_keys("pwned")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    row = wait_for(browser, "the hostile event alone", lambda d: len(rows(d, "events-rows")) == 1
                   and d.find_element(By.CSS_SELECTOR, f"#events-rows tr[data-id='{XSS_ID}']"))
    cell = row.find_element(By.CSS_SELECTOR, "td.snippet")  # textContent: the cell is cut
    marks = cell.find_elements(By.TAG_NAME, "mark")
    assert marks and {m.get_attribute("textContent") for m in marks} == {"pwned"}
    assert "document.title='" in cell.get_attribute("textContent") and "<b>hostile</b>" in row.text
    assert [e.tag_name for e in cell.find_elements(By.CSS_SELECTOR, "*")] == \
        ["mark"] * len(cell.find_elements(By.TAG_NAME, "mark"))
    assert browser.title == "kairo-sidecar"
    assert not browser.find_elements(By.TAG_NAME, "img")
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1
    shot(browser, "10-search-hostile")


def test_log_out_returns_to_the_login_form(browser: WebDriver, site: Site) -> None:
    """The Log out button (shown because a token guards the console) clears the cookie: the
    browser is back at the login form with no cookie and no event shown."""
    log_in(browser, site)
    button = wait_for(browser, "the logout button", lambda d: d.find_element(
        By.CSS_SELECTOR, "#logout button") if d.find_element(By.ID, "logout").is_displayed()
        else None)
    button.click()
    wait_for(browser, "the login form", lambda d: d.find_elements(By.ID, "token"))
    assert not browser.get_cookies()
    assert "kairo.test" not in browser.page_source
    browser.get(site.base + "/api/events")
    assert "kairo.test" not in browser.page_source
