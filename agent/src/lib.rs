pub mod attestor;
