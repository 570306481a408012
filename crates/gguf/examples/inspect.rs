//! Prints a GGUF file's metadata (arrays summarised) and tensor directory:
//! `cargo run -p gguf --example inspect FILE`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: inspect FILE.gguf")?;
    let file = gguf::GgufFile::open(std::path::Path::new(&path))?;
    println!("GGUF v{}, alignment {}", file.version, file.alignment);
    for (key, value) in file.metadata() {
        println!("{key}: {}", value.describe());
    }
    for (type_name, count) in file.type_counts() {
        println!("{type_name} x {count}");
    }
    for tensor in file.tensors() {
        println!(
            "{} {} {:?}",
            tensor.name,
            tensor.type_name(),
            tensor.shape()
        );
    }
    Ok(())
}
