"""Map building (SfM or triangulation from known poses with pycolmap) and the map directory format."""
