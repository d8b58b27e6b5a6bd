pub mod log {}
