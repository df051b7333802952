//! Faults (issue 10): what fails, and that nothing is lost, forwarded unaccounted or over a cap.

mod hostile;
mod leaks;
mod redis;
mod replicas;
mod restarts;
mod tenants;
mod upstream;
