def test_t(request):
    assert request.node.get_closest_marker("timeout").args == (300,)
