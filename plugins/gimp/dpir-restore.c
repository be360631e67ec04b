/* DPIR Restore: a GIMP 3 plug-in that restores a layer, or the selected part of it, with dpir.
 *
 * Filters > Enhance > DPIR Restore...; PDB procedure "plug-in-dpir-restore", for script-fu:
 *
 *   (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer)
 *                         #:model "/path/to/bundle" #:steps 28 #:seed 1234 #:tile-size 512)
 *
 * A thin layer over the dpir C ABI (include/dpir.h), linked statically so the plug-in is one file. It reads the
 * selection's bounds, hands dpir the pixels those bounds need (dpir_region_of_interest) with the whole layer as
 * the global context, and writes the result through the shadow buffer: one undo step, blended through a
 * feathered selection. Pixels are read and written in the layer's own precision and TRC; babl and dpir do every
 * conversion. Nothing is written unless the restore succeeds, so an error, or GIMP's progress cancel (which ends
 * the plug-in process), leaves the layer as it was.
 *
 * This file is the procedure and the restore; dialog.c is the dialog. The model is the "model" argument, else
 * $DPIR_MODEL, else ~/.local/share/dpir/model ($XDG_DATA_HOME/dpir/model). ONNX Runtime is found as libdpir
 * finds it: $DPIR_ORT_LIB, $ORT_DYLIB_PATH, or libonnxruntime.so beside the plug-in (where
 * `make -C plugins/gimp install-gimp` puts it). The help pages are installed beside it too, in help/.
 */

#include <string.h>
#include <unistd.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "dpir-restore.h"

#define HELP_DOMAIN "org.dpir.restore"


#define RESTORE_TYPE_PLUG_IN (restore_plug_in_get_type ())
G_DECLARE_FINAL_TYPE (RestorePlugIn, restore_plug_in, RESTORE, PLUG_IN, GimpPlugIn)

struct _RestorePlugIn
{
  GimpPlugIn parent_instance;
};

/* One restore running on a worker thread while the thread that started it, the only one that talks to GIMP and
 * GTK, shows its progress. The fields below `lock` are shared and only touched under it. */
typedef struct
{
  const dpir_restorer  *restorer;
  const dpir_region    *region;
  const dpir_pixels    *destination;
  dpir_restore_options  options;

  GMutex                lock;
  GCond                 changed;
  dpir_progress         progress;
  gboolean              fresh;
  gboolean              cancel;
  gboolean              finished;
  dpir_status           status;
  gchar                *message;
} RestoreJob;


static GList          *restore_plug_in_query_procedures (GimpPlugIn           *plug_in);
static gboolean        restore_plug_in_set_i18n         (GimpPlugIn           *plug_in,
                                                         const gchar          *name,
                                                         gchar               **gettext_domain,
                                                         gchar               **catalog_dir);
static GimpProcedure  *restore_plug_in_create_procedure (GimpPlugIn           *plug_in,
                                                         const gchar          *name);
static void            restore_plug_in_quit             (GimpPlugIn           *plug_in);
static GimpValueArray *restore_run                      (GimpProcedure        *procedure,
                                                         GimpRunMode           run_mode,
                                                         GimpImage            *image,
                                                         GimpDrawable        **drawables,
                                                         GimpProcedureConfig  *config,
                                                         gpointer              run_data);
static GimpPDBStatusType restore_drawable               (GimpImage            *image,
                                                         GimpDrawable         *drawable,
                                                         GimpProcedureConfig  *config,
                                                         LoadedModel          *loaded,
                                                         GError              **error);


G_DEFINE_TYPE (RestorePlugIn, restore_plug_in, GIMP_TYPE_PLUG_IN)

GIMP_MAIN (RESTORE_TYPE_PLUG_IN)


static void
restore_plug_in_class_init (RestorePlugInClass *klass)
{
  GimpPlugInClass *plug_in_class = GIMP_PLUG_IN_CLASS (klass);

  plug_in_class->query_procedures = restore_plug_in_query_procedures;
  plug_in_class->create_procedure = restore_plug_in_create_procedure;
  plug_in_class->set_i18n         = restore_plug_in_set_i18n;
  plug_in_class->quit             = restore_plug_in_quit;
}

static void
restore_plug_in_init (RestorePlugIn *plug_in)
{
}

/* The help pages live in help/ beside the plug-in's binary (install.sh puts them there); GIMP reads
 * help/en/gimp-help.xml. Only taken while GIMP queries the plug-in. */
static void
register_help (GimpPlugIn *plug_in)
{
  gchar *binary = g_file_read_link ("/proc/self/exe", NULL);
  gchar *folder;
  GFile *help;

  if (binary == NULL)
    return;
  folder = g_path_get_dirname (binary);
  help   = g_file_new_build_filename (folder, "help", NULL);
  gimp_plug_in_set_help_domain (plug_in, HELP_DOMAIN, help);
  g_object_unref (help);
  g_free (folder);
  g_free (binary);
}

static GList *
restore_plug_in_query_procedures (GimpPlugIn *plug_in)
{
  register_help (plug_in);
  return g_list_append (NULL, g_strdup (PLUG_IN_PROC));
}

/* English only: no translation catalogue to look for. */
static gboolean
restore_plug_in_set_i18n (GimpPlugIn   *plug_in,
                          const gchar  *name,
                          gchar       **gettext_domain,
                          gchar       **catalog_dir)
{
  return FALSE;
}

/* The arguments are what scripts pass; 0 and -1 there take the model's values, which the dialog shows instead. */
static GimpProcedure *
restore_plug_in_create_procedure (GimpPlugIn  *plug_in,
                                  const gchar *name)
{
  GimpProcedure *procedure;

  if (g_strcmp0 (name, PLUG_IN_PROC) != 0)
    return NULL;

  procedure = gimp_image_procedure_new (plug_in, name, GIMP_PDB_PROC_TYPE_PLUGIN, restore_run, NULL, NULL);

  gimp_procedure_set_image_types (procedure, "RGB*, GRAY*");
  gimp_procedure_set_sensitivity_mask (procedure, GIMP_PROCEDURE_SENSITIVE_DRAWABLE);
  gimp_procedure_set_menu_label (procedure, "DP_IR Restore...");
  gimp_procedure_add_menu_path (procedure, "<Image>/Filters/Enhance");
  gimp_procedure_set_documentation (procedure,
                                    "Restore a degraded photo with DPIR diffusion",
                                    "Restores the selected part of the layer (all of it without a selection) with "
                                    "DPIR, a diffusion model, on ONNX Runtime. The pixels around the selection and "
                                    "the whole layer guide the result; a feathered selection blends it in. Alpha "
                                    "is kept as it is. For scripts, 0 (or -1) takes the model's own value. The "
                                    "model is the Model folder, else $" MODEL_ENV ", else "
                                    "~/.local/share/dpir/model.",
                                    PLUG_IN_PROC);
  gimp_procedure_set_attribution (procedure, "The dpir authors", "The dpir authors", "2025");

  gimp_procedure_add_file_argument (procedure, "model", "_Model",
                                    "The DPIR model: a folder holding dpir.json (or that file). None: $"
                                    MODEL_ENV ", then ~/.local/share/dpir/model",
                                    GIMP_FILE_CHOOSER_ACTION_SELECT_FOLDER, TRUE, NULL, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument (procedure, "steps", "_Quality (steps)",
                                   "Denoising steps, 1 to 1000; 0 takes the model's",
                                   0, 1000, 0, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument (procedure, "seed", "S_eed",
                                   "Seed of the starting noise; -1 takes the model's",
                                   -1, G_MAXINT, -1, G_PARAM_READWRITE);
  gimp_procedure_add_double_argument (procedure, "guidance", "Prompt stren_gth",
                                      "Classifier-free guidance, 1 to 100 (1 is off, more doubles the work); "
                                      "0 takes the model's",
                                      0.0, 100.0, 0.0, G_PARAM_READWRITE);
  gimp_procedure_add_choice_argument (procedure, "tile-mode", "_Tile mode",
                                      "How a layer larger than one tile is restored",
                                      gimp_choice_new_with_values ("independent", DPIR_TILE_MODE_INDEPENDENT,
                                                                   "Independent",
                                                                   "Each tile on its own, blended with its "
                                                                   "neighbours: a selection gets exactly the "
                                                                   "pixels of a whole-layer restore",
                                                                   "joint", DPIR_TILE_MODE_JOINT, "Joint",
                                                                   "Tiles blended at every step, for the most "
                                                                   "even texture across tiles; a selection "
                                                                   "restores the tiles around it plus the "
                                                                   "context margin",
                                                                   NULL),
                                      "independent", G_PARAM_READWRITE);
  gimp_procedure_add_int_argument (procedure, "tile-size", "Tile si_ze",
                                   "Tile side in pixels, a multiple of the model's step (16 for SD3); 0 takes "
                                   "the model's",
                                   0, 65536, 0, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument (procedure, "tile-overlap", "Tile o_verlap",
                                   "Overlap of neighbouring tiles in pixels, smaller than the tile; -1 takes the "
                                   "model's",
                                   -1, 65536, -1, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument (procedure, "context-margin", "Conte_xt margin",
                                   "Joint tile mode: pixels of layer around the selection restored with it; "
                                   "-1 takes one tile overlap. No effect in independent mode",
                                   -1, 65536, -1, G_PARAM_READWRITE);
  gimp_procedure_add_choice_argument (procedure, "execution-provider", "Run o_n",
                                      "Where the model runs",
                                      gimp_choice_new_with_values ("auto", DPIR_EXECUTION_PROVIDER_AUTO,
                                                                   "Best available",
                                                                   "The NVIDIA card with TensorRT or CUDA when "
                                                                   "they load, else the CPU",
                                                                   "cpu", DPIR_EXECUTION_PROVIDER_CPU, "CPU",
                                                                   "Always works; slow for large layers",
                                                                   "cuda", DPIR_EXECUTION_PROVIDER_CUDA,
                                                                   "NVIDIA card (CUDA)",
                                                                   "Needs onnxruntime-gpu with CUDA 13 and cuDNN 9",
                                                                   "tensorrt", DPIR_EXECUTION_PROVIDER_TENSORRT,
                                                                   "NVIDIA card (TensorRT)",
                                                                   "Fastest; also needs TensorRT 10, and builds "
                                                                   "its engines (minutes) on first use",
                                                                   NULL),
                                      "auto", G_PARAM_READWRITE);
  gimp_procedure_add_double_argument (procedure, "max-memory", "Memor_y limit (GiB)",
                                      "The most memory the restore may take, in GiB (the graphics card's on a "
                                      "GPU): the plug-in then loads the model in parts and restores in smaller "
                                      "tiles, or says how much it needs. 0: no limit",
                                      0.0, 4096.0, 0.0, G_PARAM_READWRITE);
  /* The model folder chosen last, as text: GIMP forgets a remembered folder that no longer exists, and the
   * dialog then still names it. */
  gimp_procedure_add_string_aux_argument (procedure, "last-model", "Last model folder",
                                          "The model folder chosen in the dialog last time", "", G_PARAM_READWRITE);

  return procedure;
}

/* GIMP's progress cancel asks the plug-in to quit (then kills it); when that happens mid-restore, leave at once,
 * before the exit handlers that would tear ONNX Runtime down under the running model (which then complains on
 * the terminal). The layer is only written after a restore succeeds, so nothing is lost. */
static volatile gboolean restoring;

static void
restore_plug_in_quit (GimpPlugIn *plug_in)
{
  if (restoring)
    _exit (0);
}

/* GIMP keeps the dialog's values for Re-Show only after a success; after a failure, keep them too, so the user
 * gets back what they chose (the same file GIMP writes). */
static void
remember_values (GimpProcedureConfig *config)
{
  gchar *name = g_strconcat (G_OBJECT_TYPE_NAME (config), ".last", NULL);
  GFile *file = gimp_directory_file ("plug-in-settings", name, NULL);

  gimp_config_serialize_to_file (GIMP_CONFIG (config), file, "settings", "end of settings", NULL, NULL);
  g_object_unref (file);
  g_free (name);
}

static GimpValueArray *
restore_run (GimpProcedure        *procedure,
             GimpRunMode           run_mode,
             GimpImage            *image,
             GimpDrawable        **drawables,
             GimpProcedureConfig  *config,
             gpointer              run_data)
{
  GimpPDBStatusType  status;
  GError            *error  = NULL;
  LoadedModel        loaded = { 0 };
  gint               n_drawables = 0;

  gegl_init (NULL, NULL);

  while (drawables != NULL && drawables[n_drawables] != NULL)
    n_drawables++;

  if (n_drawables != 1 || ! gimp_item_is_layer (GIMP_ITEM (drawables[0])))
    {
      g_set_error (&error, GIMP_PLUG_IN_ERROR, 0,
                   "DPIR Restore works on one layer at a time: select exactly one layer (not a mask or channel).");
      return gimp_procedure_new_return_values (procedure, GIMP_PDB_CALLING_ERROR, error);
    }
  if (gimp_item_is_group (GIMP_ITEM (drawables[0])))
    {
      g_set_error (&error, GIMP_PLUG_IN_ERROR, 0,
                   "DPIR Restore cannot restore a layer group: select one of its layers.");
      return gimp_procedure_new_return_values (procedure, GIMP_PDB_CALLING_ERROR, error);
    }
  if (gimp_drawable_is_indexed (drawables[0]))
    {
      g_set_error (&error, GIMP_PLUG_IN_ERROR, 0,
                   "DPIR Restore needs an RGB or grayscale image: convert this indexed image with "
                   "Image > Mode > RGB first.");
      return gimp_procedure_new_return_values (procedure, GIMP_PDB_CALLING_ERROR, error);
    }

  if (run_mode != GIMP_RUN_INTERACTIVE)
    {
      status = restore_drawable (image, drawables[0], config, &loaded, &error);
    }
  else
    {
      /* The dialog until the restore succeeds or the user cancels: a failure brings it back with the message
       * and every value as the user left it. */
      gchar *failure = NULL;

      gimp_ui_init (PLUG_IN_BINARY);
      for (;;)
        {
          if (! restore_dialog (procedure, config, image, drawables[0], &loaded, failure))
            {
              status = GIMP_PDB_CANCEL;
              break;
            }
          status = restore_drawable (image, drawables[0], config, &loaded, &error);
          if (status != GIMP_PDB_EXECUTION_ERROR)
            break;
          remember_values (config);
          g_free (failure);
          failure = g_strdup (error->message);
          g_clear_error (&error);
        }
      g_free (failure);
    }
  loaded_model_clear (&loaded);

  if (status == GIMP_PDB_SUCCESS && run_mode != GIMP_RUN_NONINTERACTIVE)
    gimp_displays_flush ();

  return gimp_procedure_new_return_values (procedure, status, error);
}


/*  The model  */

gchar *
config_model_path (GimpProcedureConfig *config)
{
  GFile *file = NULL;
  gchar *path = NULL;

  g_object_get (config, "model", &file, NULL);
  if (file != NULL)
    {
      path = g_file_get_path (file);
      if (path == NULL) /* not a local file: keep its URI, which the bundle check then names */
        path = g_file_get_uri (file);
      g_object_unref (file);
    }
  return path;
}

/* Opens the bundle at `path` (NULL: dpir's default); on failure, an error that says what to do. */
static dpir_bundle *
open_bundle (const gchar  *path,
             GError      **error)
{
  dpir_bundle *bundle = NULL;
  dpir_status  status = dpir_bundle_open (path, &bundle);

  if (status != DPIR_STATUS_OK)
    set_dpir_error (error, path != NULL ? "this model cannot be used" : "no model found", status,
                    dpir_last_error_message ());
  return bundle;
}

void
loaded_model_clear (LoadedModel *loaded)
{
  dpir_restorer_free (loaded->restorer);
  dpir_bundle_free (loaded->bundle);
  memset (loaded, 0, sizeof *loaded);
}

dpir_restorer *
load_model (LoadedModel          *loaded,
            GimpProcedureConfig  *config,
            GError              **error)
{
  dpir_load_options  load;
  dpir_bundle       *bundle;
  dpir_bundle_info   info;
  dpir_restorer     *restorer = NULL;
  dpir_status        status;
  gchar             *path = config_model_path (config);
  gdouble            max_memory;

  bundle = open_bundle (path, error);
  g_free (path);
  if (bundle == NULL)
    return NULL;
  dpir_bundle_get_info (bundle, &info, sizeof info);

  dpir_load_options_init (&load, sizeof load);
  load.execution_provider = (guint32) gimp_procedure_config_get_choice_id (config, "execution-provider");
  g_object_get (config, "max-memory", &max_memory, NULL);
  load.memory_budget = (uint64_t) (max_memory * 1073741824.0);

  if (loaded->restorer != NULL && g_strcmp0 (loaded->model.path, info.path) == 0 &&
      loaded->provider == load.execution_provider && loaded->budget == load.memory_budget)
    {
      dpir_bundle_free (bundle);
      return loaded->restorer;
    }

  loaded_model_clear (loaded);
  status = dpir_restorer_load (info.path, &load, &restorer);
  if (status != DPIR_STATUS_OK)
    {
      gchar *what = g_strdup_printf ("cannot load the model %s", info.path);

      set_dpir_error (error, what, status, dpir_last_error_message ());
      g_free (what);
      dpir_bundle_free (bundle);
      return NULL;
    }
  loaded->bundle   = bundle;
  loaded->model    = info;
  loaded->provider = load.execution_provider;
  loaded->budget   = load.memory_budget;
  loaded->restorer = restorer;
  return restorer;
}

gboolean
options_from_config (GimpProcedureConfig     *config,
                     const dpir_bundle_info  *model,
                     dpir_restore_options    *options,
                     GError                 **error)
{
  gint    steps, seed, tile_size, tile_overlap, context_margin;
  gdouble guidance;
  guint32 step = model->tile_step_pixels;
  guint32 per_latent = model->pixels_per_latent;

  g_object_get (config,
                "steps", &steps, "seed", &seed, "guidance", &guidance, "tile-size", &tile_size,
                "tile-overlap", &tile_overlap, "context-margin", &context_margin, NULL);
  if (tile_size != 0 && (tile_size % step != 0 || (guint32) tile_size > model->max_tile_pixels))
    {
      g_set_error (error, GIMP_PLUG_IN_ERROR, 0,
                   "DPIR Restore: the tile size must be a multiple of %u pixels, at most %u, for this model; "
                   "it is %d.", step, model->max_tile_pixels, tile_size);
      return FALSE;
    }
  if (tile_overlap > 0 && tile_overlap % per_latent != 0)
    {
      g_set_error (error, GIMP_PLUG_IN_ERROR, 0,
                   "DPIR Restore: the tile overlap must be a multiple of %u pixels for this model; it is %d.",
                   per_latent, tile_overlap);
      return FALSE;
    }

  dpir_restore_options_init (options, sizeof *options);
  options->steps          = (uint32_t) steps;
  options->seed           = seed < 0 ? DPIR_SEED_DEFAULT : (uint64_t) seed;
  options->guidance       = (float) guidance;
  options->tile_mode      = (uint32_t) gimp_procedure_config_get_choice_id (config, "tile-mode");
  options->tile_size      = (uint32_t) tile_size / per_latent;
  options->tile_overlap   = tile_overlap < 0 ? -1 : tile_overlap / (gint) per_latent;
  options->context_margin = context_margin;
  return TRUE;
}

/* What to do about a failure, by status. */
static const gchar *
status_hint (dpir_status status)
{
  switch (status)
    {
    case DPIR_STATUS_ONNX_RUNTIME:
      return " The plug-in needs ONNX Runtime 1.31 or newer beside it (make -C plugins/gimp install-gimp puts it "
             "there), or named by DPIR_ORT_LIB.";
    case DPIR_STATUS_EXECUTION_PROVIDER:
      return " Choose another place to run the model (the CPU always works), or install what the card needs.";
    case DPIR_STATUS_BUNDLE:
    case DPIR_STATUS_IO:
      return " Choose a DPIR model folder (one holding dpir.json), or set " MODEL_ENV ".";
    case DPIR_STATUS_TOO_LARGE:
      return " Restore a smaller selection, or a smaller tile size.";
    case DPIR_STATUS_OUT_OF_MEMORY:
      return " Raise the memory limit to what the message names, or close programs that hold memory.";
    case DPIR_STATUS_INVALID_OPTIONS:
      return " Check the dialog's values.";
    default:
      return "";
    }
}

void
set_dpir_error (GError      **error,
                const gchar  *what,
                dpir_status   status,
                const gchar  *detail)
{
  /* dpir's message says what went wrong ("image too large: ..."); its fixed status text stands in for none. */
  const gchar *text = detail != NULL && *detail != '\0' ? detail : dpir_status_string (status);

  g_set_error (error, GIMP_PLUG_IN_ERROR, 0, "DPIR Restore: %s: %s%s%s", what, text,
               g_str_has_suffix (text, ".") || g_str_has_suffix (text, "?") ? "" : ".", status_hint (status));
}


/*  Pixels  */

/* The layer's precision and TRC as a babl format and dpir descriptor fields. Gray with alpha, which dpir has no
 * layout for, travels as RGBA: babl converts both ways. */
void
choose_format (GimpImage    *image,
               GimpDrawable *drawable,
               PixelFormat  *pixels)
{
  const gchar *type;
  const gchar *trc;
  gchar       *name;
  gboolean     gray  = gimp_drawable_is_gray (drawable);
  gboolean     alpha = gimp_drawable_has_alpha (drawable);

  switch (gimp_image_get_precision (image))
    {
    case GIMP_PRECISION_U8_LINEAR:
    case GIMP_PRECISION_U8_NON_LINEAR:
    case GIMP_PRECISION_U8_PERCEPTUAL:
      type = "u8";
      pixels->sample = DPIR_SAMPLE_TYPE_U8;
      break;
    case GIMP_PRECISION_U16_LINEAR:
    case GIMP_PRECISION_U16_NON_LINEAR:
    case GIMP_PRECISION_U16_PERCEPTUAL:
      type = "u16";
      pixels->sample = DPIR_SAMPLE_TYPE_U16;
      break;
    case GIMP_PRECISION_HALF_LINEAR:
    case GIMP_PRECISION_HALF_NON_LINEAR:
    case GIMP_PRECISION_HALF_PERCEPTUAL:
      type = "half";
      pixels->sample = DPIR_SAMPLE_TYPE_F16;
      break;
    default: /* 32-bit integer, float and double: float carries them */
      type = "float";
      pixels->sample = DPIR_SAMPLE_TYPE_F32;
      break;
    }

  switch (gimp_image_get_precision (image))
    {
    case GIMP_PRECISION_U8_LINEAR:
    case GIMP_PRECISION_U16_LINEAR:
    case GIMP_PRECISION_U32_LINEAR:
    case GIMP_PRECISION_HALF_LINEAR:
    case GIMP_PRECISION_FLOAT_LINEAR:
    case GIMP_PRECISION_DOUBLE_LINEAR:
      trc = "";
      pixels->transfer = DPIR_TRANSFER_LINEAR;
      break;
    case GIMP_PRECISION_U8_PERCEPTUAL:
    case GIMP_PRECISION_U16_PERCEPTUAL:
    case GIMP_PRECISION_U32_PERCEPTUAL:
    case GIMP_PRECISION_HALF_PERCEPTUAL:
    case GIMP_PRECISION_FLOAT_PERCEPTUAL:
    case GIMP_PRECISION_DOUBLE_PERCEPTUAL:
      trc = "~";
      pixels->transfer = DPIR_TRANSFER_SRGB;
      break;
    default:
      trc = "'";
      pixels->transfer = DPIR_TRANSFER_SRGB;
      break;
    }

  if (gray && ! alpha)
    {
      name             = g_strdup_printf ("Y%s %s", trc, type);
      pixels->channels = 1;
    }
  else if (alpha)
    {
      name             = g_strdup_printf ("R%sG%sB%sA %s", trc, trc, trc, type);
      pixels->channels = 4;
    }
  else
    {
      name             = g_strdup_printf ("R%sG%sB%s %s", trc, trc, trc, type);
      pixels->channels = 3;
    }
  pixels->format = babl_format_with_space (name, babl_format_get_space (gimp_drawable_get_format (drawable)));
  pixels->bytes_per_pixel = babl_format_get_bytes_per_pixel (pixels->format);
  g_free (name);
}

/* Allocates a packed buffer of `width` x `height` pixels and describes it; NULL when memory is short. */
static guchar *
new_pixels (const PixelFormat *format,
            guint32            width,
            guint32            height,
            dpir_pixels       *pixels)
{
  gsize   stride = (gsize) width * format->bytes_per_pixel;
  guchar *data   = g_try_malloc (stride * height);

  dpir_pixels_init (pixels, sizeof *pixels);
  pixels->width    = width;
  pixels->height   = height;
  pixels->channels = format->channels;
  pixels->sample   = format->sample;
  pixels->transfer = format->transfer;
  pixels->alpha    = DPIR_ALPHA_STRAIGHT;
  pixels->stride   = (ptrdiff_t) stride;
  pixels->data     = data;
  return data;
}

guchar *
read_pixels (GeglBuffer        *buffer,
             const PixelFormat *format,
             const dpir_rect   *area,
             dpir_pixels       *pixels)
{
  guchar *data = new_pixels (format, area->width, area->height, pixels);

  if (data != NULL)
    gegl_buffer_get (buffer, GEGL_RECTANGLE (area->x, area->y, area->width, area->height), 1.0,
                     format->format, data, (gint) pixels->stride, GEGL_ABYSS_NONE);
  return data;
}


/*  Running a restore  */

static int
on_progress (const struct dpir_progress *progress,
             void                       *user_data)
{
  RestoreJob *job = user_data;
  gboolean    cancel;

  g_mutex_lock (&job->lock);
  job->progress = *progress;
  job->fresh    = TRUE;
  cancel        = job->cancel;
  g_cond_signal (&job->changed);
  g_mutex_unlock (&job->lock);

  return cancel ? 1 : 0;
}

static gpointer
restore_worker (gpointer user_data)
{
  RestoreJob  *job     = user_data;
  dpir_status  status  = dpir_restore_region (job->restorer, job->region, job->destination, &job->options);
  gchar       *message = g_strdup (dpir_last_error_message ()); /* per thread: read it here */

  g_mutex_lock (&job->lock);
  job->status   = status;
  job->message  = message;
  job->finished = TRUE;
  g_cond_signal (&job->changed);
  g_mutex_unlock (&job->lock);
  return NULL;
}

/* Runs the restore on a worker thread and relays its progress from this one; with `keep_ui_alive`, GTK's
 * events are handled while it waits, so a dialog stays responsive. */
static dpir_status
run_restore (const dpir_restorer        *restorer,
             const dpir_region          *region,
             const dpir_pixels          *destination,
             const dpir_restore_options *options,
             ShowProgress                show,
             gpointer                    show_data,
             gboolean                    keep_ui_alive,
             gchar                     **message)
{
  RestoreJob  job = { 0 };
  GThread    *worker;

  job.restorer                   = restorer;
  job.region                     = region;
  job.destination                = destination;
  job.options                    = *options;
  job.options.progress           = on_progress;
  job.options.progress_user_data = &job;
  g_mutex_init (&job.lock);
  g_cond_init (&job.changed);

  restoring = TRUE;
  worker = g_thread_new ("dpir-worker", restore_worker, &job);

  g_mutex_lock (&job.lock);
  while (! job.finished)
    {
      if (job.fresh)
        {
          dpir_progress progress = job.progress;
          gboolean      going_on;

          job.fresh = FALSE;
          g_mutex_unlock (&job.lock);
          going_on = show (&progress, show_data);
          g_mutex_lock (&job.lock);
          if (! going_on)
            job.cancel = TRUE;
          continue;
        }
      if (! keep_ui_alive)
        {
          g_cond_wait (&job.changed, &job.lock);
          continue;
        }
      g_cond_wait_until (&job.changed, &job.lock, g_get_monotonic_time () + G_TIME_SPAN_MILLISECOND * 30);
      g_mutex_unlock (&job.lock);
      while (gtk_events_pending ())
        gtk_main_iteration ();
      g_mutex_lock (&job.lock);
    }
  g_mutex_unlock (&job.lock);
  g_thread_join (worker);
  restoring = FALSE;

  g_mutex_clear (&job.lock);
  g_cond_clear (&job.changed);
  *message = job.message;
  return job.status;
}

dpir_status
restore_rect (const dpir_restorer        *restorer,
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
              gchar                     **message)
{
  GeglBuffer  *buffer       = gimp_drawable_get_buffer (drawable);
  guint32      frame_width  = (guint32) gimp_drawable_get_width (drawable);
  guint32      frame_height = (guint32) gimp_drawable_get_height (drawable);
  guchar      *crop_data    = NULL, *context_data = NULL;
  dpir_pixels  crop, whole_layer;
  dpir_region  region;
  dpir_rect    roi;
  dpir_status  status;

  *restored_data = NULL;
  *message       = NULL;
  status = dpir_region_of_interest (restorer, frame_width, frame_height, rect, options, &roi);
  if (status != DPIR_STATUS_OK)
    {
      *message = g_strdup (dpir_last_error_message ());
      g_object_unref (buffer);
      return status;
    }

  crop_data = read_pixels (buffer, format, &roi, &crop);
  dpir_region_init (&region, sizeof region);
  region.source       = &crop;
  region.origin_x     = roi.x;
  region.origin_y     = roi.y;
  region.frame_width  = frame_width;
  region.frame_height = frame_height;
  region.rect         = *rect;
  region.context      = context;
  if (context == NULL && roi.width == frame_width && roi.height == frame_height)
    {
      region.context = &crop;
    }
  else if (context == NULL)
    {
      dpir_rect whole = { 0, 0, frame_width, frame_height };

      context_data   = read_pixels (buffer, format, &whole, &whole_layer);
      region.context = &whole_layer;
    }
  *restored_data = new_pixels (format, rect->width, rect->height, restored);
  if (crop_data == NULL || *restored_data == NULL || (region.context == &whole_layer && context_data == NULL))
    {
      *message = g_strdup_printf ("not enough memory for the pixels of this %u x %u layer", frame_width,
                                  frame_height);
      status   = DPIR_STATUS_OUT_OF_MEMORY;
    }
  else
    {
      status = run_restore (restorer, &region, restored, options, show, show_data, keep_ui_alive, message);
    }

  if (status != DPIR_STATUS_OK)
    g_clear_pointer (restored_data, g_free);
  g_free (context_data);
  g_free (crop_data);
  g_object_unref (buffer);
  return status;
}

/* Shows one progress report in GIMP's progress bar, naming where the model runs (`data`); FALSE when GIMP no longer
 * takes progress (the run should stop). */
static gboolean
show_in_gimp (const dpir_progress *progress,
              gpointer             data)
{
  const gchar *provider = data;
  guint32      tiles    = MAX (progress->tiles, 1);
  guint32      tile     = CLAMP (progress->tile, 1, tiles);
  gchar       *where;
  gboolean     ok;

  where = tiles > 1 ? g_strdup_printf (", tile %u of %u", tile, tiles) : g_strdup ("");
  switch (progress->stage)
    {
    case DPIR_STAGE_ENCODE:
      ok = gimp_progress_set_text_printf ("DPIR on %s: encoding%s", provider, where);
      break;
    case DPIR_STAGE_PROMPT:
      ok = gimp_progress_set_text_printf ("DPIR on %s: reading the image's context%s", provider, where);
      break;
    case DPIR_STAGE_SAMPLE:
      ok = gimp_progress_set_text_printf ("DPIR on %s: denoising, step %u of %u%s", provider,
                                          MIN (progress->step + 1, progress->steps), progress->steps, where);
      break;
    default:
      ok = gimp_progress_set_text_printf ("DPIR on %s: decoding%s", provider, where);
      break;
    }
  g_free (where);

  return gimp_progress_update (progress->fraction) && ok;
}

static GimpPDBStatusType
restore_drawable (GimpImage            *image,
                  GimpDrawable         *drawable,
                  GimpProcedureConfig  *config,
                  LoadedModel          *loaded,
                  GError              **error)
{
  GimpPDBStatusType     result  = GIMP_PDB_EXECUTION_ERROR;
  const dpir_restorer  *restorer;
  dpir_restorer_info    running;
  dpir_restore_options  options;
  dpir_requirements     needs;
  dpir_pixels           restored;
  dpir_rect             rect;
  dpir_status           status;
  PixelFormat           format;
  guchar               *restored_data = NULL;
  gchar                *message = NULL;
  gint                  x, y, width, height;

  if (! gimp_drawable_mask_intersect (drawable, &x, &y, &width, &height))
    {
      g_set_error (error, GIMP_PLUG_IN_ERROR, 0,
                   "DPIR Restore: the selection does not touch this layer: there is nothing to restore.");
      return GIMP_PDB_EXECUTION_ERROR;
    }

  gimp_progress_init ("DPIR: loading the model");
  restorer = load_model (loaded, config, error);
  if (restorer == NULL || ! options_from_config (config, &loaded->model, &options, error))
    return GIMP_PDB_EXECUTION_ERROR;

  rect.x      = (uint32_t) x;
  rect.y      = (uint32_t) y;
  rect.width  = (uint32_t) width;
  rect.height = (uint32_t) height;
  status = dpir_get_requirements (restorer, (uint32_t) gimp_drawable_get_width (drawable),
                                  (uint32_t) gimp_drawable_get_height (drawable), &options, &needs, sizeof needs);
  if (status != DPIR_STATUS_OK)
    {
      set_dpir_error (error, "cannot restore this layer", status, dpir_last_error_message ());
      return GIMP_PDB_EXECUTION_ERROR;
    }
  dpir_restorer_get_info (restorer, &running, sizeof running);
  gimp_progress_set_text_printf ("DPIR: restoring on %s (memory: about %.1f GiB at the peak)",
                                 running.execution_provider_name, (double) needs.estimated_bytes / 1073741824.0);

  choose_format (image, drawable, &format);
  status = restore_rect (restorer, drawable, &format, NULL, &rect, &options, show_in_gimp,
                         (gpointer) running.execution_provider_name, FALSE, &restored_data, &restored, &message);
  if (status == DPIR_STATUS_CANCELLED)
    {
      result = GIMP_PDB_CANCEL;
      goto out;
    }
  if (status != DPIR_STATUS_OK)
    {
      set_dpir_error (error, status == DPIR_STATUS_INVALID_OPTIONS || status == DPIR_STATUS_TOO_LARGE
                               ? "cannot restore this layer" : "the restore failed", status, message);
      goto out;
    }

  /* Only now is the layer touched: through the shadow buffer, merged as one undo step. */
  {
    GeglBuffer *shadow = gimp_drawable_get_shadow_buffer (drawable);

    gegl_buffer_set (shadow, GEGL_RECTANGLE (x, y, width, height), 0, format.format, restored_data,
                     (gint) restored.stride);
    g_object_unref (shadow); /* flushes the shadow tiles to GIMP */
  }
  if (! gimp_drawable_merge_shadow (drawable, TRUE))
    {
      g_set_error (error, GIMP_PLUG_IN_ERROR, 0, "DPIR Restore: GIMP did not take the restored pixels: %s",
                   gimp_pdb_get_last_error (gimp_get_pdb ()));
      goto out;
    }
  gimp_drawable_update (drawable, x, y, width, height);
  gimp_progress_update (1.0);
  result = GIMP_PDB_SUCCESS;

out:
  g_free (message);
  g_free (restored_data);
  return result;
}
