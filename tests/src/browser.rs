//! A real browser for the page tests: Debian's Chromium (`chromium`), headless,
//! driven over WebDriver by its chromedriver (`chromium-driver`), through fantoccini.
//!
//! Each [`Browser`] runs its own chromedriver on a free loopback port and one
//! browser session in it; both end when it is dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

/// How long the driver may take to listen, and any one element to appear.
const WAIT: Duration = Duration::from_secs(20);

/// Where Debian's packages put the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session and the chromedriver it runs in.
pub struct Browser {
    driver: Child,
    client: Client,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("driver", &self.driver.id()).finish_non_exhaustive()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session in it.
    ///
    /// # Panics
    /// If Chromium or chromedriver is not installed (the README's apt line names
    /// them), or the session does not start.
    pub async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: the page tests need Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1000,800",
                    "--lang=zh-CN", "--no-first-run", "--disable-extensions"
                ]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) => {
                    assert!(Instant::now() < deadline, "no browser session: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Self { driver, client }
    }

    /// The WebDriver session, for what the helpers here do not cover.
    #[must_use]
    pub const fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url`.
    ///
    /// # Panics
    /// If the browser cannot.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The element `css` selects, waiting for it to appear.
    ///
    /// # Panics
    /// If none appears in time.
    pub async fn find(&self, css: &str) -> Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(error) => panic!("no {css} on {}: {error}", self.url().await),
        }
    }

    /// Types `text` into the field `css` selects.
    ///
    /// # Panics
    /// If there is no such field.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field.send_keys(text).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks what `css` selects (a link or a form's button) and waits until the page
    /// it leads to has replaced this one, so that what is looked up next is on it.
    ///
    /// # Panics
    /// If there is nothing to click, or the page stays.
    pub async fn click(&self, css: &str) {
        let old = self.find("html").await;
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
        let deadline = Instant::now() + WAIT;
        // The old page's root goes stale once the new page is loaded.
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "clicking {css} led nowhere");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The text of what `css` selects.
    ///
    /// # Panics
    /// If there is no such element.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// The whole page's text.
    ///
    /// # Panics
    /// If the page has no body.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// The address the browser shows.
    pub async fn url(&self) -> String {
        self.client.current_url().await.map(|url| url.to_string()).unwrap_or_default()
    }

    /// Saves a PNG of the page to `path`.
    ///
    /// # Panics
    /// If the browser cannot take one or the file cannot be written.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
