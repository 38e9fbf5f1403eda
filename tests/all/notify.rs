//! Notifications from a running agent, delivered for real: a signed JSON
//! webhook that refuses the first try, a Slack-compatible webhook, e-mail
//! over SMTP with STARTTLS (aiosmtpd), and a destination that never answers.
//! A failed drill sends exactly one message to each, its recovery one more,
//! later passes none; the stuck destination holds up no job; a secret that
//! a failing check quotes leaves in no message.

use crate::api::{agent, issue, post, signed_policies, wait_job};
use crate::harness::{self, HttpReceiver, Smtp};
use std::time::{Duration, Instant};

/// Planted where a failing check quotes it: it is the webhook's HMAC key,
/// which the redactor knows.
const HMAC_KEY: &str = "notify-hmac-key-must-never-leave-0042";

#[test]
fn a_failed_drill_and_its_recovery_reach_every_destination_once() {
    let ops = HttpReceiver::start(1);
    let chat = HttpReceiver::start(0);
    let smtp = Smtp::start();
    let (stuck, _hold) = harness::black_hole();
    let policies = signed_policies("");
    std::fs::write(
        policies.join("notify.toml"),
        format!(
            "world = \"notifier\"\nwasm = \"builtin:notifier_default.wasm\"\n[grants]\nconfig = true\nlogging = true\n\
             [config]\ndestinations = \"ops, chat, mail, stuck\"\n\
             [destinations.ops]\nkind = \"webhook\"\nurl = \"{}\"\nhmac_key = \"{HMAC_KEY}\"\n\
             [destinations.chat]\nkind = \"slack\"\nurl = \"{}\"\n\
             [destinations.mail]\nkind = \"email\"\nserver = \"127.0.0.1:{}\"\nfrom = \"firedrill@example.com\"\nto = [\"oncall@example.com\"]\nca_file = \"{}\"\n\
             [destinations.stuck]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{stuck}/hook\"\n",
            ops.url("/hook"),
            chat.url("/services/T0/B0/x"),
            smtp.port,
            smtp.ca.display()
        ),
    )
    .unwrap();
    // The drill checks a flag of the source's; the failing check quotes a
    // note (an error casting it), which holds the secret.
    std::fs::write(
        policies.join("sql.toml"),
        "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nconfig = true\nlogging = true\nsql = { database = \"drill\" }\n\
         [config]\n\"assert.flag\" = \"SELECT CASE WHEN ok THEN true ELSE note::boolean END FROM flag\"\n",
    )
    .unwrap();
    let api = agent("notify", &policies);
    let pg = harness::postgres();
    let mut source = pg.client(&api.db);
    source
        .batch_execute(&format!(
            "CREATE TABLE flag (ok boolean, note text); INSERT INTO flag VALUES (false, '{HMAC_KEY}')"
        ))
        .unwrap();
    let (operator, _) = issue("operator", "notify");
    let run_with = |path: &str, body: &str| {
        let started = Instant::now();
        let r = post(api.port, path, &operator, body);
        assert_eq!(r.status, 202, "{r:?}");
        let job = wait_job(api.port, &operator, r.json()["id"].as_str().unwrap());
        // Delivery (and the destination that never answers) is not the job's.
        assert!(started.elapsed() < Duration::from_secs(60), "{job}");
        job
    };
    let run = |path: &str| run_with(path, "{\"source\": \"app\"}");
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what} never arrived"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    assert_eq!(run("/v1/backups")["state"], "succeeded");
    let job = run("/v1/drills");
    assert_eq!(job["passed"], false, "{job}");
    wait_for("the failure", &|| {
        ops.delivered().len() == 1 && chat.delivered().len() == 1 && smtp.messages().len() == 1
    });
    // The webhook refused the first try: delivered on the next.
    assert_eq!(ops.requests().len(), 2, "{:?}", ops.requests());

    source.batch_execute("UPDATE flag SET ok = true").unwrap();
    let job = run("/v1/backups");
    assert_eq!(job["state"], "succeeded", "{job}");
    let good = job["backup"].as_str().unwrap().to_string();
    let job = run("/v1/drills");
    assert_eq!(job["passed"], true, "{job}");
    wait_for("the recovery", &|| {
        ops.delivered().len() == 2 && chat.delivered().len() == 2 && smtp.messages().len() == 2
    });
    // Passing again is no news.
    let job = run_with(
        "/v1/drills",
        &format!("{{\"source\": \"app\", \"backup\": \"{good}\"}}"),
    );
    assert_eq!(job["passed"], true, "{job}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ops.delivered().len(), 2);
    assert_eq!(chat.delivered().len(), 2);
    assert_eq!(smtp.messages().len(), 2);

    let hooks = ops.delivered();
    let events: Vec<String> = hooks
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["event"].to_string())
        .collect();
    assert_eq!(events, ["\"drill-failed\"", "\"drill-passed\""]);
    for r in &hooks {
        let signature = r.header("x-firedrill-signature").unwrap_or_default();
        assert_eq!(
            signature,
            format!(
                "sha256={}",
                firedrill::notify::deliver::sign(HMAC_KEY, r.body.as_bytes())
            ),
            "{r:?}"
        );
    }
    let first: serde_json::Value = serde_json::from_str(&hooks[0].body).unwrap();
    // The failing check quoted the secret; the message carries its mask.
    let text = first["text"].as_str().unwrap();
    assert!(
        text.contains("assert.flag") && text.contains("boolean: \"***"),
        "{first}"
    );
    let slack: serde_json::Value = serde_json::from_str(&chat.delivered()[1].body).unwrap();
    assert!(slack["text"].as_str().unwrap().contains("app"), "{slack}");
    let mails = smtp.messages();
    assert!(
        mails.iter().all(|m| m.contains("oncall@example.com")),
        "{mails:?}"
    );
    let everything = format!("{:?}{:?}{mails:?}", ops.requests(), chat.requests());
    assert!(
        !everything.contains(HMAC_KEY),
        "the secret left: {everything}"
    );
}
