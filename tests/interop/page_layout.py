#!/usr/bin/env python3
"""Measures an authrelay page's layout in headless Chromium at a given window width.

usage: page_layout.py URL WIDTH OUT_PNG
Loads URL in a window WIDTH CSS pixels wide, saves a screenshot to OUT_PNG and prints a JSON
object: the viewport width, the document's scroll width (larger means a horizontal scroll bar),
every element whose box reaches past the viewport's right edge, and the page's visible text.
"""
import json, sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

MEASURE = """
const vw = document.documentElement.clientWidth;
const wide = [];
for (const el of document.body.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width > 0 && r.right > vw + 0.5) {
    wide.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' right=' + Math.round(r.right));
  }
}
return {viewport: vw, scroll_width: document.documentElement.scrollWidth, overflowing: wide,
        text: document.body.innerText};
"""


def main():
    url, width, png = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
              "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--window-size=%d,1200" % width):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.set_page_load_timeout(30)
        d.get(url)
        result = d.execute_script(MEASURE)
        d.save_screenshot(png)
        print(json.dumps(result))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
