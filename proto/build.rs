//! Generates the prost/tonic code. protoc comes from `protoc-bin-vendored` unless `PROTOC` is set,
//! so a fresh machine needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let protos = [
        "proto/outrider/v1/event.proto",
        "proto/outrider/v1/agent.proto",
        "proto/outrider/v1/sync.proto",
        "proto/outrider/v1/cqrs.proto",
        "proto/outrider/v1/bus.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
