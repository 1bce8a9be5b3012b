//! Test support for kiln's crates: the wgpu test lane ([`lane`]: a GPU device on a CPU-only
//! machine, through Mesa's llvmpipe) and the watchdog every lane test runs under ([`watchdog`]:
//! the test in a child process with a deadline, so a hang fails with every thread's backtrace
//! instead of stalling the run).

pub mod lane;
pub mod watchdog;

pub use lane::{assert_close, randn, wgpu_lane_device, LANE_TOLERANCE};
pub use watchdog::{run_in_child, run_on_lane};

/// A `#[test]` whose body runs on the wgpu lane under the watchdog ([`run_on_lane`]): in a child
/// process (this test binary re-run on this one test), one lane test at a time, failing with every
/// thread's backtrace when it passes its deadline. Skipped (saying why) where the machine has no
/// lane, unless `KILN_WGPU_LANE_REQUIRED=1`.
///
/// ```ignore
/// kiln_ops::lane_test! {
///     /// What it checks.
///     fn matmul_on_the_lane(lane) {
///         let x = burn::tensor::Tensor::<2>::ones([4, 4], &lane);
///         assert_eq!(x.sum().into_scalar::<f32>(), 16.0);
///     }
/// }
/// ```
#[macro_export]
macro_rules! lane_test {
    ($(#[$attr:meta])* fn $name:ident($lane:ident) $body:block) => {
        $(#[$attr])*
        #[test]
        fn $name() {
            $crate::testing::run_on_lane(module_path!(), stringify!($name), |$lane: $crate::burn::tensor::Device| $body)
        }
    };
}
