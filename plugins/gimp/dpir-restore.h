/* DPIR Restore for GIMP 3: what the procedure (dpir-restore.c) and its dialog (dialog.c) share. */

#ifndef DPIR_RESTORE_H
#define DPIR_RESTORE_H

#include <libgimp/gimp.h>

#include <dpir.h>

#define PLUG_IN_PROC   "plug-in-dpir-restore"
#define PLUG_IN_BINARY "dpir-restore"
#define MODEL_ENV      "DPIR_MODEL"

/* How pixels travel between a layer and dpir: a babl format in the layer's colour space, and the dpir descriptor
 * fields that say the same thing. */
typedef struct
{
  const Babl *format;
  guint32     channels;
  guint32     sample;
  guint32     transfer;
  gsize       bytes_per_pixel;
} PixelFormat;

/* A restorer loaded for one run of the plug-in, kept so that the dialog's preview and the restore after it load
 * the model once. Reloaded when the model, the place it runs or the memory limit changes. */
typedef struct
{
  dpir_bundle      *bundle;   /* owns model's strings */
  dpir_bundle_info  model;    /* its folder and values */
  guint32           provider;
  guint64           budget;
  dpir_restorer    *restorer;
} LoadedModel;

/* Progress shown while a restore runs; returns FALSE to cancel it. Called on the thread that started the restore. */
typedef gboolean (*ShowProgress) (const dpir_progress *progress,
                                  gpointer             data);

/* The model folder the "model" argument names, or NULL for dpir's default. */
gchar          *config_model_path     (GimpProcedureConfig  *config);

/* The restorer for the config's model, provider and memory limit: `loaded`'s when it matches, else loaded now;
 * `loaded->model` then says which model it is and its values. */
dpir_restorer  *load_model            (LoadedModel          *loaded,
                                       GimpProcedureConfig  *config,
                                       GError              **error);
void            loaded_model_clear    (LoadedModel          *loaded);

/* The config's values as dpir restore options, tile sizes converted from pixels; FALSE with an error for values
 * the model cannot take. */
gboolean        options_from_config   (GimpProcedureConfig  *config,
                                       const dpir_bundle_info *model,
                                       dpir_restore_options *options,
                                       GError              **error);

/* The layer's precision and TRC as a babl format and dpir descriptor fields. */
void            choose_format         (GimpImage            *image,
                                       GimpDrawable         *drawable,
                                       PixelFormat          *format);

/* Restores `rect` of the layer into a new packed buffer of `format` (described by `restored`), the whole layer
 * being the global context (`context`, read once by the caller, or NULL to read it here). Progress goes to
 * `show`; with `keep_ui_alive` the GTK main loop runs while waiting. Returns the dpir status; on failure
 * `*message` says why. */
dpir_status     restore_rect          (const dpir_restorer        *restorer,
                                       GimpDrawable               *drawable,
                                       const PixelFormat          *format,
                                       const dpir_pixels          *context,
                                       const dpir_rect            *rect,
                                       const dpir_restore_options *options,
                                       ShowProgress                show,
                                       gpointer                    show_data,
                                       gboolean                    keep_ui_alive,
                                       guchar                    **restored_data,
                                       dpir_pixels                *restored,
                                       gchar                     **message);

/* Reads `area` of a buffer into a new packed buffer of `format`; NULL when memory is short. */
guchar         *read_pixels           (GeglBuffer           *buffer,
                                       const PixelFormat    *format,
                                       const dpir_rect      *area,
                                       dpir_pixels          *pixels);

/* Fills `error` with dpir's message for a failed call and what the user can do about it. */
void            set_dpir_error        (GError              **error,
                                       const gchar          *what,
                                       dpir_status           status,
                                       const gchar          *detail);

/* The dialog (dialog.c): TRUE when the user chose to restore, with the settings in `config`. The model it
 * loaded for its preview stays in `loaded`. */
gboolean        restore_dialog        (GimpProcedure        *procedure,
                                       GimpProcedureConfig  *config,
                                       GimpImage            *image,
                                       GimpDrawable         *drawable,
                                       LoadedModel          *loaded,
                                       const gchar          *error_text);

#endif
