//! The harness's servers are real, private and ours.

use crate::harness;
use std::io::{Read, Write};

#[test]
fn postgres_is_a_private_cluster() {
    let pg = harness::postgres();
    assert_ne!(pg.port, 5432, "must not be the machine's own Postgres");
    let mut c = pg.client("postgres");
    let row = c
        .query_one("SELECT current_setting('data_directory'), version()", &[])
        .unwrap();
    let data: String = row.get(0);
    assert!(
        data.starts_with(harness::scratch().to_str().unwrap()),
        "{data}"
    );
    let db = pg.fresh_database("servers");
    pg.client(&db)
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .unwrap();
}

#[test]
fn redis_is_a_private_server() {
    let r = harness::redis();
    assert_ne!(r.port, 6379, "must not be the machine's own Redis");
    let mut c = r.connection();
    let _: () = redis::cmd("SET")
        .arg("harness:probe")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let info: String = redis::cmd("INFO").arg("server").query(&mut c).unwrap();
    assert!(info.contains(&format!("tcp_port:{}", r.port)), "{info}");
}

#[test]
fn s3_answers_and_refuses_unsigned_requests() {
    let s3 = harness::s3();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s3.port)).unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    sock.read_to_string(&mut reply).unwrap();
    let status = reply.lines().next().unwrap_or_default().to_string();
    assert!(
        status.starts_with("HTTP/1.1 4"),
        "an unsigned request must be refused: {status}"
    );
}
