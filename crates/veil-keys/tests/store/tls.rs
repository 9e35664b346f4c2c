//! PostgreSQL over TLS (KDS-PG-TLS-01/02): a server that takes only TLS connections on its TCP
//! port, with a certificate from a test CA. The store connects and works when told to trust
//! that CA; it refuses the connection when the certificate does not verify (another CA, or
//! the system's roots); and without TLS the server refuses it.

use std::sync::OnceLock;

use veil_keys::store::{PostgresStore, Store};
use veil_testkit::pki::TestPki;
use veil_testkit::postgres::TempPostgres;

use crate::common::room;

fn server() -> &'static TempPostgres {
    static PG: OnceLock<TempPostgres> = OnceLock::new();
    PG.get_or_init(TempPostgres::start_tls)
}

#[test]
fn a_store_over_tls_verifies_the_servers_certificate_and_works() {
    let pg = server();
    let url = pg.tls_url(&pg.database_name());
    let s = PostgresStore::open_with(&url, Some(pg.ca_pem().as_bytes()), 2).unwrap();
    s.create_room(&room("over-tls")).unwrap();
    assert_eq!(s.room("over-tls").unwrap(), Some(room("over-tls")));
    // The listening connection of a replica is TLS too: once connected it says so
    // (`Change::All`: read everything again), then passes on another store's writes.
    let mut changes = s.changes().unwrap().expect("PostgreSQL announces writes");
    let other = PostgresStore::open_with(&url, Some(pg.ca_pem().as_bytes()), 2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            if changes.recv().await != Some(veil_keys::store::Change::All) {
                return false;
            }
            other.delete_room("over-tls").unwrap();
            loop {
                match changes.recv().await {
                    Some(veil_keys::store::Change::Room(r)) if r == "over-tls" => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await
    });
    assert_eq!(
        got,
        Ok(true),
        "the write was announced over the TLS listener"
    );
}

#[test]
fn a_certificate_that_does_not_verify_is_refused() {
    let pg = server();
    let url = pg.tls_url(&pg.database_name());
    let stranger = TestPki::new("stranger");
    for ca in [Some(stranger.ca_pem.as_bytes()), None] {
        let e = PostgresStore::open_with(&url, ca, 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("certificate") || e.contains("CA certificates"),
            "the error names the certificate: {e}"
        );
    }
    let e = PostgresStore::open_with(&url, Some(b"not pem"), 2).unwrap_err();
    assert!(e.to_string().contains("CA file"), "{e}");
}

#[test]
fn without_tls_the_server_refuses_the_connection() {
    let pg = server();
    let url = pg
        .tls_url(&pg.database_name())
        .replace("sslmode=require", "sslmode=disable");
    let e = PostgresStore::open_with(&url, Some(pg.ca_pem().as_bytes()), 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pg_hba.conf") || e.contains("no encryption"),
        "{e}"
    );
}
