//! Detects `redis-server`, `redis-cli` and `tinyproxy` on the PATH, so that the Redis and
//! proxy tests report themselves as ignored (with how to install them) on machines without
//! them, instead of passing or failing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_redis_server)");
    println!("cargo::rustc-check-cfg=cfg(has_redis_cli)");
    println!("cargo::rustc-check-cfg=cfg(has_tinyproxy)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    for (binary, cfg) in [
        ("redis-server", "has_redis_server"),
        // The Cluster and Sentinel tests set their servers up with it (Debian: redis-tools,
        // which redis-server depends on).
        ("redis-cli", "has_redis_cli"),
        ("tinyproxy", "has_tinyproxy"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
            .unwrap_or(false);
        if found {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
