"""Macros for the project's BUILD files: one py_test per pytest file, one py_binary per CLI."""

def pytest_files(srcs, deps = [], data = [], size = "medium", timeout = "long"):
    """One py_test per file, named after it (tests/test_models.py -> //tests:test_models)."""
    for src in srcs:
        native.py_test(
            name = src[:-len(".py")],
            srcs = [src, "//tools/bazel:pytest_main.py"],
            main = "//tools/bazel:pytest_main.py",
            args = ["$(location %s)" % src],
            deps = deps,
            data = data,
            size = size,
            timeout = timeout,
            python_version = "PY3",
        )

def _module_main_impl(ctx):
    ctx.actions.write(
        ctx.outputs.out,
        "from tools.bazel import launch\nlaunch.run(%r)\n" % ctx.attr.module,
    )

# A two-line main file, written by Bazel itself (no shell action, nothing to sandbox).
_module_main = rule(
    implementation = _module_main_impl,
    attrs = {
        "module": attr.string(mandatory = True),
        "out": attr.output(mandatory = True),
    },
)

def py_cli(name, module, deps = [], data = []):
    """A py_binary that runs `python -m module` from the caller's directory (see launch.py)."""
    main = "_%s_main.py" % name
    _module_main(name = name + "_main", out = main, module = module)
    native.py_binary(
        name = name,
        srcs = [main],
        main = main,
        deps = deps + ["//tools/bazel:launch"],
        data = data,
        python_version = "PY3",
    )

def py_clis(package, files, deps = [], data = []):
    """py_cli for each `name: file` whose file exists, so a CLI gets its target when it lands."""
    for name, path in files.items():
        if native.glob([path]):
            module = package + "." + path[:-len(".py")].replace("/", ".")
            py_cli(name = name, module = module, deps = deps, data = data)
