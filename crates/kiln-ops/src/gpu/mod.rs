//! The GPU side of kiln's ops: each op's alternatives to burn's kernel ([`conv`], [`norm`],
//! [`flash`]; attention's padding lives with the op in [`crate::attention`]), the measured choice
//! between them ([`route`]) and the on-disk store of those choices ([`store`]).

pub mod conv;
pub mod flash;
pub mod norm;
pub mod route;
pub mod store;
