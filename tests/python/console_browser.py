"""Drives the governance console in headless Chromium (Selenium and
Debian's chromedriver), as a researcher, two reviewers and a planner, and
runs the approved query through the ADBC Flight SQL driver.

Usage: console_browser.py CONSOLE_URL SECRETS_DIR FLIGHT_URI SCREENSHOT_DIR
Prints JSON: {"checks": {name: value}, "request": id, "query": query id}.
Each check is what the page showed; the Rust test asserts on them.
"""
import json
import os
import sys

import adbc_driver_flightsql.dbapi as flight_sql
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE, SECRETS, FLIGHT, SHOTS = sys.argv[1:5]
PURPOSE = 'Care home <b>admissions</b> & <script>alert("x")</script> study'
DRAFT = "SELECT k.service_type, count(*) AS packages FROM council.care_packages k GROUP BY k.service_type"
SQL = (
    "SELECT k.service_type, count(DISTINCT k.pid) AS people "
    "FROM council.care_packages k JOIN gp.registrations g ON k.pid = g.pid "
    "GROUP BY k.service_type"
)


def browser():
    options = Options()
    options.binary_location = os.environ.get("CARROW_CHROMIUM", "/usr/bin/chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100"]:
        options.add_argument(arg)
    service = Service(os.environ.get("CARROW_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def navigating(driver, act):
    """Runs `act` (a click or a form post) and waits for the next page."""
    old = driver.find_element(By.TAG_NAME, "html")
    act()

    def left(_):
        try:
            old.is_enabled()
            return False
        except WebDriverException:  # stale, or no longer in the document
            return True

    WebDriverWait(driver, 20).until(left)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def password(user):
    with open(os.path.join(SECRETS, f"{user}.token")) as f:
        return f.read().strip()


def login(driver, user):
    driver.get(BASE + "/login")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password(user))
    navigating(driver, driver.find_element(By.ID, "login").click)


def heading(driver):
    return driver.find_element(By.TAG_NAME, "h1").text


def decide(driver, request, decision, comment):
    driver.get(f"{BASE}/requests/{request}")
    Select(driver.find_element(By.ID, "decision")).select_by_value(decision)
    driver.find_element(By.ID, "comment").send_keys(comment)
    navigating(driver, driver.find_element(By.ID, "record").click)


def post_form(driver, action, fields):
    """Submits a form the page did not offer (as a forger would), by script."""
    navigating(driver, lambda: driver.execute_script(
        """
        const form = document.createElement('form');
        form.method = 'post';
        form.action = arguments[0];
        for (const [k, v] of Object.entries(arguments[1])) {
            const input = document.createElement('input');
            input.type = 'hidden'; input.name = k; input.value = v;
            form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """,
        action,
        fields,
    ))


def shot(driver, name):
    os.makedirs(SHOTS, exist_ok=True)
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def main():
    checks = {}
    researcher, reviewer1, reviewer2, planner = browser(), browser(), browser(), browser()
    try:
        # The researcher submits a request in the console.
        login(researcher, "researcher")
        checks["researcher_lands_on"] = heading(researcher)
        researcher.get(BASE + "/requests/new")
        researcher.find_element(By.ID, "project").send_keys("demo")
        researcher.find_element(By.ID, "purpose").send_keys(PURPOSE)
        Select(researcher.find_element(By.ID, "output")).select_by_value("aggregate")
        researcher.find_element(By.ID, "sql").send_keys(DRAFT)
        navigating(researcher, researcher.find_element(By.ID, "submit").click)
        draft = int(researcher.current_url.rstrip("/").rsplit("/", 1)[1])

        # The board asks for changes; the researcher revises the request and
        # the board sees what changed.
        login(reviewer1, "reviewer1")
        checks["reviewer_lands_on"] = heading(reviewer1)
        decide(reviewer1, draft, "request-changes", "count people, not packages, among registered patients")
        checks["status_after_changes"] = reviewer1.find_element(By.ID, "status").text
        researcher.get(f"{BASE}/requests/{draft}")
        navigating(researcher, researcher.find_element(By.ID, "revise").click)
        sql_box = researcher.find_element(By.ID, "sql")
        checks["revision_prefilled"] = sql_box.get_attribute("value")
        sql_box.clear()
        sql_box.send_keys(SQL)
        navigating(researcher, researcher.find_element(By.ID, "submit").click)
        request = int(researcher.current_url.rstrip("/").rsplit("/", 1)[1])
        checks["diff"] = researcher.find_element(By.ID, "diff").text
        researcher.get(f"{BASE}/requests/{draft}")
        checks["draft_status"] = researcher.find_element(By.ID, "status").text
        researcher.get(f"{BASE}/requests/{request}")
        checks["purpose_text"] = researcher.find_element(By.ID, "purpose").text
        checks["purpose_elements"] = len(researcher.find_elements(By.CSS_SELECTOR, "#purpose b, #purpose script"))
        checks["status_after_submit"] = researcher.find_element(By.ID, "status").text
        checks["reads"] = researcher.find_element(By.ID, "reads").text
        # The requester cannot decide on it: the form is not theirs to post.
        csrf = researcher.find_element(By.CSS_SELECTOR, "form.logout input[name=csrf]").get_attribute("value")
        post_form(researcher, f"/requests/{request}/decide", {"csrf": csrf, "decision": "approve"})
        checks["requester_decides"] = heading(researcher)

        # Two reviewers approve in two separate browser sessions.
        decide(reviewer1, request, "approve", "purpose and output fit the project")
        checks["approvals_after_first"] = reviewer1.find_element(By.ID, "approvals").text
        checks["approved_already_notice"] = len(reviewer1.find_elements(By.ID, "approved-already"))
        decide(reviewer1, request, "approve", "again")
        checks["second_approval_by_same_reviewer"] = heading(reviewer1) + ": " + \
            reviewer1.find_element(By.CSS_SELECTOR, "p.problem").text
        login(reviewer2, "reviewer2")
        decide(reviewer2, request, "approve", "agreed")
        checks["status_after_two"] = reviewer2.find_element(By.ID, "status").text

        # A forged form without this session's token is refused; nothing changes.
        post_form(reviewer1, f"/requests/{request}/decide", {"decision": "revoke"})
        checks["forged_form"] = heading(reviewer1)
        post_form(reviewer1, f"/requests/{request}/decide", {"csrf": "0" * 64, "decision": "revoke"})
        checks["wrong_token_form"] = heading(reviewer1)
        reviewer1.get(f"{BASE}/requests/{request}")
        checks["status_after_forgeries"] = reviewer1.find_element(By.ID, "status").text

        # A planner opens no governance page.
        login(planner, "planner")
        checks["planner_pages"] = {}
        for page in ["/overview", "/audit", "/requests", f"/requests/{request}"]:
            planner.get(BASE + page)
            checks["planner_pages"][page] = heading(planner)

        # The researcher runs the approved query through ADBC (an edited
        # one is refused, and the refusal is on the record).
        with flight_sql.connect(FLIGHT, db_kwargs={"username": "researcher", "password": password("researcher")}) as conn:
            cur = conn.cursor()
            try:
                cur.execute(SQL + " ORDER BY 1")
                cur.fetch_arrow_table()
                checks["edited_sql"] = "ran"
            except Exception as e:  # the driver's error type varies by version
                checks["edited_sql"] = str(e)
            cur = conn.cursor()
            cur.execute(SQL)
            checks["adbc_rows"] = cur.fetch_arrow_table().num_rows

        # The run is on the request page and the audit page, with its
        # fragments and disclosure report.
        reviewer1.get(f"{BASE}/requests/{request}")
        runs = reviewer1.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
        checks["runs"] = len(runs)
        shot(reviewer1, "request")
        query = runs[0].find_element(By.TAG_NAME, "a").text if runs else ""
        reviewer1.get(BASE + "/audit?user=researcher")
        listed = [a.text for a in reviewer1.find_elements(By.CSS_SELECTOR, "#attempts tbody tr td:nth-child(2) a")]
        checks["audit_lists_run"] = query in listed
        checks["coordinator_log"] = reviewer1.find_element(By.ID, "coordinator-log").text
        checks["reconciliation"] = reviewer1.find_element(By.ID, "reconciliation").text
        shot(reviewer1, "audit")
        reviewer1.get(f"{BASE}/audit/{query}")
        checks["fragment_nodes"] = sorted(
            row.find_elements(By.TAG_NAME, "td")[0].text
            for row in reviewer1.find_elements(By.CSS_SELECTOR, "#fragments tbody tr")
        )
        checks["fragment_receipts"] = [
            row.find_elements(By.TAG_NAME, "td")[4].text
            for row in reviewer1.find_elements(By.CSS_SELECTOR, "#fragments tbody tr")
        ]
        checks["disclosure"] = reviewer1.find_element(By.ID, "disclosure").text
        shot(reviewer1, "audit-query")
        reviewer1.get(BASE + "/requests")
        checks["queue"] = reviewer1.find_element(By.ID, "queue").text
        shot(reviewer1, "queue")
        reviewer1.get(BASE + "/overview")
        checks["charts"] = len(reviewer1.find_elements(By.CSS_SELECTOR, "figure svg"))
        checks["overview_text"] = reviewer1.find_element(By.TAG_NAME, "main").text
        shot(reviewer1, "overview")
        print(json.dumps({"checks": checks, "request": request, "query": query}))
    finally:
        for driver in [researcher, reviewer1, reviewer2, planner]:
            driver.quit()


if __name__ == "__main__":
    main()
