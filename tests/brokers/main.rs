//! Every broker publisher against the real broker: what arrives is read back with the broker's own Rust client
//! (body, key, headers, order per aggregate) and with a real FastStream subscriber (Python), whose Pydantic
//! model must decode every event, and whose raw message must parse as a CloudEvent with the Python SDK.

mod common;
mod kafka;
mod nats;
mod rabbitmq;
mod redis;
mod restart;
mod url;
