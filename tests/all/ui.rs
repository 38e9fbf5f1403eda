//! The status page in a real browser (headless Chromium, JavaScript off)
//! against a running agent with a real backup and drill: the login that
//! turns a token into an HttpOnly, SameSite=Strict cookie, the source with
//! its verdict and charts, a drill report with its checks, a viewer refused
//! the backup button, an operator starting a backup with it, and a form
//! without the session's CSRF token refused.

use crate::api::{agent, get, issue, post, signed_policies, wait_job};
use crate::harness::{self, Browser};

#[test]
fn the_status_page_signs_in_shows_sources_and_reports_and_guards_its_buttons() {
    let api = agent("ui", &signed_policies(""));
    let (operator, _) = issue("operator", "ops-person");
    let (viewer, _) = issue("viewer", "watcher");
    for path in ["/v1/backups", "/v1/drills"] {
        let r = post(api.port, path, &operator, "{\"source\": \"app\"}");
        assert_eq!(r.status, 202, "{r:?}");
        let job = wait_job(api.port, &operator, r.json()["id"].as_str().unwrap());
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let base = format!("http://127.0.0.1:{}", api.port);
    let b = Browser::start();

    // Signed out: the page sends you to sign in; a wrong token is refused.
    b.go(&format!("{base}/ui"));
    b.wait_url(|u| u.ends_with("/ui/login"));
    b.type_into("#token", "not-a-token");
    b.click("#sign-in");
    b.wait_url(|u| u.ends_with("/ui/login"));
    assert!(b.text("#error").contains("token"), "{}", b.source());

    b.type_into("#token", &viewer);
    b.click("#sign-in");
    b.wait_url(|u| u.ends_with("/ui"));
    let cookie = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "firedrill_session")
        .expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    let page = b.source();
    assert!(
        !page.contains(&viewer),
        "the token is never written into a page"
    );
    assert!(page.contains("id=\"source-app\""), "{page}");
    assert!(b.text("#source-app h2").contains("proven"), "{page}");
    // Two charts, the RTO one with the drill's point.
    assert_eq!(b.count("#source-app svg"), 2, "{page}");
    assert!(b.count("#source-app svg polyline") >= 1, "{page}");
    // What retention would do to the backup.
    assert!(
        b.text("#source-app table.backups").contains("keep"),
        "{page}"
    );

    // A drill report, with its checks.
    b.click("#source-app a.pass");
    b.wait_url(|u| u.contains("/ui/report"));
    assert_eq!(b.text("#verdict"), "passed", "{}", b.source());
    assert!(b.count("#checks tr") > 2, "{}", b.source());
    assert!(b.text("#checks").contains("rows.public"), "{}", b.source());

    // A viewer may look, not start a backup.
    b.go(&format!("{base}/ui"));
    let jobs_before = get(api.port, "/v1/jobs", &operator).json()["jobs"]
        .as_array()
        .unwrap()
        .len();
    b.click("#source-app .run-backup");
    b.wait_url(|u| u.ends_with("/ui/run"));
    assert!(b.text("#message").contains("operator"), "{}", b.source());
    let jobs_after = get(api.port, "/v1/jobs", &operator).json()["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(jobs_before, jobs_after);

    // Signed out, then in as an operator, who starts one.
    b.go(&format!("{base}/ui"));
    b.click("#sign-out");
    b.wait_url(|u| u.ends_with("/ui/login"));
    assert!(!b.cookies().iter().any(|c| c["name"] == "firedrill_session"));
    b.type_into("#token", &operator);
    b.click("#sign-in");
    b.wait_url(|u| u.ends_with("/ui"));
    b.click("#source-app .run-backup");
    let url = b.wait_url(|u| u.contains("/ui?started="));
    let id = url.split("started=").nth(1).unwrap().to_string();
    assert!(b.text("#started").contains(&id), "{}", b.source());
    let job = wait_job(api.port, &operator, &id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["trigger"], "ui:ops-person", "{job}");
    // Two backups now: both charts have points. What docs/status-page.png
    // shows (FIREDRILL_UI_SCREENSHOT=docs/status-page.png).
    b.go(&format!("{base}/ui"));
    assert_eq!(b.count("#source-app svg polyline"), 2, "{}", b.source());
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Some(path) = std::env::var_os("FIREDRILL_UI_SCREENSHOT") {
        std::fs::write(path, png).unwrap();
    }

    // The session's cookie without the page's CSRF token: refused.
    let page = b.source();
    let csrf = regex::Regex::new(r#"name="csrf" value="([0-9a-f]{64})""#)
        .unwrap()
        .captures(&page)
        .unwrap_or_else(|| panic!("no CSRF token: {page}"))[1]
        .to_string();
    let cookie = format!("firedrill_session={operator}");
    let form = "application/x-www-form-urlencoded";
    let run = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![("cookie", cookie.as_str()), ("content-type", form)];
        all.extend_from_slice(headers);
        harness::http(api.port, "POST", "/ui/run", &all, body)
    };
    let r = run(&[], "kind=backup&source=app&csrf=forged");
    assert_eq!(r.status, 403, "{r:?}");
    // From another site: refused, even with the right token.
    let r = run(
        &[("origin", "https://evil.example")],
        &format!("kind=backup&source=app&csrf={csrf}"),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("another site"), "{r:?}");
    // A path where a source's name goes: refused before the store is read.
    let r = harness::http(
        api.port,
        "GET",
        "/ui/report?source=../../etc&backup=x",
        &[("cookie", &cookie)],
        "",
    );
    assert_eq!(r.status, 400, "{r:?}");
    // What is no cookie value never becomes one.
    let r = harness::http(
        api.port,
        "POST",
        "/ui/login",
        &[("content-type", form)],
        "token=abc%3B+Domain%3Devil.example",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");
}
