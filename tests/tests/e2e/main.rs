//! Veil's end-to-end tests, one binary: the real server (key service and blind SFU) in this process and SDK clients on loopback; one behaviour per module.

mod bandwidth;
mod blackout;
mod call;
mod events;
mod guests;
mod impaired;
mod late_joiner;
mod membership;
mod policy;
mod secrets;
mod simulcast;
mod soak;
mod tls;
mod udp_blocked;
