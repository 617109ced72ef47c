"""After collection the plugin freezes the heap that imports and collection built, so that the
tests' full garbage collections stop traversing torch and the model libraries; an in-process
session (pytester) leaves its caller's collector as it found it."""
import gc


def test_the_collected_heap_is_frozen_while_tests_run(pytester):
    pytester.makepyfile("""
        import gc

        def test_frozen():
            assert gc.get_freeze_count() > 0
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_an_in_process_session_leaves_the_callers_collector_as_it_was(pytester):
    frozen = gc.get_freeze_count() > 0  # this session's own plugin froze it, unless disabled
    pytester.makepyfile("def test_nothing():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert (gc.get_freeze_count() > 0) == frozen
