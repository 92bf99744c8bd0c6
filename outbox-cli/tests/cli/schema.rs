//! `outbox schema`: in this test binary (which links event types, as a service's own `outbox` binary does) and
//! as the plain `outbox` binary (which links none).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use outbox::OutboxEvent;
use outbox::schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{failed, stderr, succeeded};

#[derive(Serialize, Deserialize, JsonSchema, OutboxEvent)]
#[schemars(crate = "outbox::schemars")]
#[outbox(type = "com.example.invoice.issued", source = "/billing", schema)]
struct InvoiceIssued {
    #[outbox(aggregate_id)]
    invoice: u64,
    amount_cents: u64,
    currency: String,
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("outbox-cli-{}-{name}", std::process::id()))
}

fn read(path: &PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("written")).expect("JSON")
}

#[test]
fn a_program_with_events_exports_their_contract_and_checks_it() {
    let bundle = temp("bundle.json");
    let code = outbox_cli::run_from([
        "outbox",
        "schema",
        "jsonschema",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let exported = read(&bundle);
    let invoice = &exported["events"]["com.example.invoice.issued"]["1.0"];
    assert_eq!(
        invoice["required"],
        json!(["invoice", "amount_cents", "currency"])
    );

    let document = temp("asyncapi.json");
    let code = outbox_cli::run_from([
        "outbox",
        "schema",
        "asyncapi",
        "--title",
        "billing",
        "--broker",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "--out",
        document.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let document = read(&document);
    assert_eq!(document["info"]["title"], "billing");
    assert_eq!(
        document["servers"]["broker"],
        json!({ "host": "127.0.0.1:5672", "protocol": "amqp" })
    );
    let message = &document["components"]["messages"]["com.example.invoice.issued.v1.0"];
    assert_eq!(
        message["headers"]["properties"]["cloudEvents_type"]["const"],
        "com.example.invoice.issued"
    );

    // Against itself: compatible. Against an export where `currency` was optional and `due` existed: breaking.
    let code = outbox_cli::run_from([
        "outbox",
        "schema",
        "check",
        "--previous",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let mut previous = exported.clone();
    let old = &mut previous["events"]["com.example.invoice.issued"]["1.0"];
    old["required"] = json!(["invoice", "amount_cents"]);
    old["properties"]["due"] = json!({ "type": "string" });
    let previous_path = temp("previous.json");
    std::fs::write(&previous_path, previous.to_string()).expect("write");
    let code = outbox_cli::run_from([
        "outbox",
        "schema",
        "check",
        "--previous",
        previous_path.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::FAILURE);

    for path in [bundle, previous_path] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn the_plain_binary_checks_two_files_and_refuses_what_it_cannot_know() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(args)
            .env_clear()
            .output()
            .expect("the outbox binary runs")
    };
    let no_events = run(&["schema", "asyncapi"]);
    assert!(
        failed(&no_events).contains("no event types are linked into this program"),
        "{}",
        stderr(&no_events)
    );

    let schema = |required: Value| {
        json!({ "events": { "com.example.invoice.issued": { "1.0": {
            "type": "object",
            "properties": { "invoice": { "type": "integer" }, "note": { "type": "string" } },
            "required": required,
        }}}})
    };
    let (previous, current) = (temp("plain-previous.json"), temp("plain-current.json"));
    std::fs::write(&previous, schema(json!(["invoice"])).to_string()).expect("write");
    std::fs::write(&current, schema(json!(["invoice", "note"])).to_string()).expect("write");
    let (previous_arg, current_arg) = (previous.to_str().unwrap(), current.to_str().unwrap());

    let breaking = run(&[
        "schema",
        "check",
        "--previous",
        previous_arg,
        "--current",
        current_arg,
    ]);
    let printed = failed(&breaking);
    assert!(
        printed.contains("`com.example.invoice.issued` version 1.0: field `/note` is now required"),
        "{printed}"
    );
    assert!(printed.contains("1 breaking change(s)"), "{printed}");

    let compatible = run(&[
        "schema",
        "check",
        "--previous",
        current_arg,
        "--current",
        previous_arg,
    ]);
    assert_eq!(
        compatible.status.code(),
        Some(1),
        "dropping a requirement is breaking too"
    );
    let same = run(&[
        "schema",
        "check",
        "--previous",
        current_arg,
        "--current",
        current_arg,
    ]);
    assert!(succeeded(&same).starts_with("compatible"));

    let not_json = run(&[
        "schema",
        "check",
        "--previous",
        "/nonexistent.json",
        "--current",
        current_arg,
    ]);
    assert!(failed(&not_json).contains("cannot read /nonexistent.json"));

    for path in [previous, current] {
        let _ = std::fs::remove_file(path);
    }
}
