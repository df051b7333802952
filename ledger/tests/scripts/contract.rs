//! Each script checks the KEYS and ARGV counts its header states before it touches anything: a
//! caller out of step with a script gets an error naming the script and the counts, not a
//! script that reads nil where an argument should be.

use anyhow::Result;
use keybrake_redis_harness::RedisServer;
use redis::Script;

const RESERVE: &str = include_str!("../../lua/reserve.lua");
const SETTLE: &str = include_str!("../../lua/settle.lua");
const UNLOCK: &str = include_str!("../../lua/unlock.lua");

/// Runs `script` with `keys` KEYS and `args` ARGV (all placeholders): its error, or `None` when it
/// ran.
async fn run(
    conn: &mut redis::aio::MultiplexedConnection,
    script: &str,
    keys: usize,
    args: usize,
) -> Option<String> {
    let script = Script::new(script);
    let mut inv = script.prepare_invoke();
    for i in 0..keys {
        inv.key(format!("{{contract}}:k{i}"));
    }
    for i in 0..args {
        inv.arg(format!("a{i}"));
    }
    inv.invoke_async::<redis::Value>(conn)
        .await
        .err()
        .map(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_refuses_counts_out_of_step_with_its_contract() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connect().await?;
    for (name, script, keys, args, want) in [
        ("reserve.lua", RESERVE, 7, 16, "8 KEYS or more and 16 ARGV"),
        ("reserve.lua", RESERVE, 8, 15, "8 KEYS or more and 16 ARGV"),
        ("reserve.lua", RESERVE, 9, 17, "8 KEYS or more and 16 ARGV"),
        ("settle.lua", SETTLE, 8, 14, "9 KEYS or more and 14 ARGV"),
        ("settle.lua", SETTLE, 9, 13, "9 KEYS or more and 14 ARGV"),
        ("settle.lua", SETTLE, 10, 15, "9 KEYS or more and 14 ARGV"),
        ("unlock.lua", UNLOCK, 0, 1, "1 KEYS and 1 ARGV"),
        ("unlock.lua", UNLOCK, 1, 2, "1 KEYS and 1 ARGV"),
        ("unlock.lua", UNLOCK, 2, 1, "1 KEYS and 1 ARGV"),
    ] {
        let err = run(&mut conn, script, keys, args)
            .await
            .unwrap_or_else(|| panic!("{name} ran with {keys} KEYS and {args} ARGV"));
        let told = format!("{name}: wants {want}, got {keys} KEYS and {args} ARGV");
        assert!(err.contains(&told), "{name}: {err:?} does not say {told:?}");
    }
    // Counts in the contract pass the check (unlock of a lock that is not there answers 0).
    assert_eq!(run(&mut conn, UNLOCK, 1, 1).await, None);
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    assert_eq!(size, 0, "a refused call wrote nothing");
    Ok(())
}
