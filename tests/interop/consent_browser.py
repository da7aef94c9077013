#!/usr/bin/env python3
"""Drives the account page's consent flow in headless Chromium, as an administrator would.

usage: consent_browser.py ADMIN_URL ACCOUNT LOCAL_PASSWORD CLIENT_SECRET|- OUT_DIR [decline]
Opens the account list, follows the account, optionally saves a client secret in the app
registration form, clicks "Get refresh token", consents (or declines) on the identity provider's
page and lands back on the account page. Prints a JSON summary; writes every page's source to
OUT_DIR/pages.html (authrelay's pages only) and a screenshot of each step to OUT_DIR/*.png.
"""
import json, sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main():
    admin, account, password, secret, out = sys.argv[1:6]
    decline = len(sys.argv) > 6 and sys.argv[6] == "decline"
    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
              "--disable-gpu", "--no-first-run", "--password-store=basic"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.set_page_load_timeout(30)
    pages, result = [], {}

    def wait_for(predicate):
        # A click returns before the next page has loaded: wait for it, or a snapshot would
        # capture the page being left.
        WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.readyState") == "complete"
                                   and predicate(d))

    def snap(name, ours=True):
        if ours:  # the provider's own page legitimately holds its state and challenge
            pages.append(d.page_source)
        d.save_screenshot("%s/%s.png" % (out, name))

    try:
        d.get(admin + "/")
        snap("1-accounts")
        d.find_element(By.LINK_TEXT, account).click()
        wait_for(lambda d: d.find_elements(By.ID, "state"))
        snap("2-account")
        if secret != "-":
            form = d.find_element(By.ID, "save-app").find_element(By.XPATH, "./ancestor::form")
            form.find_element(By.NAME, "client_secret").send_keys(secret)
            form.find_element(By.NAME, "password").send_keys(password)
            d.find_element(By.ID, "save-app").click()
            wait_for(lambda d: "saved=1" in d.current_url)
            snap("3-saved")
            result["saved"] = d.find_element(By.ID, "notice").text
        form = d.find_element(By.ID, "get-refresh-token").find_element(By.XPATH, "./ancestor::form")
        form.find_element(By.NAME, "password").send_keys(password)
        d.find_element(By.ID, "get-refresh-token").click()
        wait_for(lambda d: "/oauth2/v2.0/authorize" in d.current_url)
        snap("4-consent", ours=False)
        result["login_hint"] = d.find_element(By.ID, "user").get_attribute("value")
        d.find_element(By.ID, "decline" if decline else "accept").click()
        wait_for(lambda d: d.current_url.startswith(admin) and d.find_elements(By.ID, "state"))
        snap("5-back")
        result["url"] = d.current_url
        for key in ("notice", "error", "state"):
            found = d.find_elements(By.ID, key)
            result[key] = found[0].text if found else None
    finally:
        with open(out + "/pages.html", "w") as f:
            f.write("\n".join(pages))
        d.quit()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
