//! Compiles proto/drover/v1 in Rust (protox), so no protoc is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("../proto");
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(
        ["drover/v1/drover.proto", "drover/v1/store.proto"],
        [&proto_root],
    )?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("drover_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The rpc `Workers.Connect` would clash with the generated
        // `WorkersClient::connect`; clients are built from a tuned channel
        // (`net::connect`) anyway.
        .build_transport(false)
        // Written by hand (src/pages.rs): the master sends jobs it encoded
        // itself. Same fields, same wire format.
        .extern_path(".drover.v1.GetResponse", "crate::pages::GetResponse")
        .extern_path(".drover.v1.WatchResponse", "crate::pages::WatchResponse")
        .compile_fds(fds)?;
    Ok(())
}
