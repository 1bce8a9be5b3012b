pub use kiln_scheduler as scheduler;
