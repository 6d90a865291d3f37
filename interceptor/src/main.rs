fn main() {
    let obj = include_bytes!(concat!(env!("OUT_DIR"), "/interceptor"));
    println!("{}", obj.len());
}
