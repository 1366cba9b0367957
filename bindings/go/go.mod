module github.com/rocmforge/rocmforge/bindings/go

go 1.19
